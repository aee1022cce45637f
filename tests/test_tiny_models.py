"""Tests for octavo.testing.tiny_models: tiny random HF models + the HF greedy reference."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from octavo.testing import tiny_models as tm

MAX_NEW = 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {fam: tm.make_tiny_model(fam, str(root / fam)) for fam in tm.FAMILIES}


def _config(path):
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


@pytest.mark.parametrize("family", tm.FAMILIES)
def test_family_loads_and_greedy_varies(models, family):
    from transformers import AutoModelForCausalLM

    path = models[family]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.exists(os.path.join(path, name)), name
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = model.config
    assert cfg.vocab_size == 1000 and cfg.hidden_size == 64
    assert cfg.num_attention_heads == 4 and cfg.num_key_value_heads == 2
    assert cfg.max_position_embeddings == 512
    assert getattr(cfg, "head_dim", None) in (None, 16)
    assert next(model.parameters()).dtype == torch.float32

    prompts = tm.random_prompts(cfg.vocab_size, 2, 6, 14, seed=7)
    outs = tm.hf_greedy(path, prompts, MAX_NEW)
    assert len(outs) == 2
    for out in outs:
        assert len(out) == MAX_NEW
        assert all(0 <= t < cfg.vocab_size for t in out)
        assert len(set(out)) > 1, f"{family}: degenerate greedy output {out}"

    lp = tm.hf_logprobs(path, prompts[0])
    assert lp.shape == (len(prompts[0]), cfg.vocab_size) and lp.dtype == torch.float32
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(len(prompts[0])))
    # logprobs of the prompt+greedy sequence agree with the greedy tokens
    full = prompts[0] + outs[0]
    lp = tm.hf_logprobs(path, full)
    assert lp[len(prompts[0]) - 1 : -1].argmax(-1).tolist() == outs[0]


def test_family_specifics(models):
    w = {fam: _weights(p) for fam, p in models.items()}
    c = {fam: _config(p) for fam, p in models.items()}

    assert c["llama"]["model_type"] == "llama" and c["llama"]["tie_word_embeddings"] is False
    assert "lm_head.weight" in w["llama"]

    assert c["qwen2"]["model_type"] == "qwen2" and c["qwen2"]["tie_word_embeddings"] is True
    assert "lm_head.weight" not in w["qwen2"]
    for proj in ("q", "k", "v"):
        b = w["qwen2"][f"model.layers.0.self_attn.{proj}_proj.bias"]
        assert b.abs().max() > 0  # random, not HF's zero init

    assert c["mistral"]["model_type"] == "mistral" and c["mistral"]["sliding_window"] == 32

    g = c["gemma3"]
    assert g["model_type"] == "gemma3_text" and g["architectures"] == ["Gemma3ForCausalLM"]
    assert g["sliding_window"] == 16 and g["head_dim"] == 16
    assert set(g["layer_types"]) == {"sliding_attention", "full_attention"}
    assert g["query_pre_attn_scalar"] != g["head_dim"]
    assert set(g["rope_parameters"]) == {"sliding_attention", "full_attention"}
    assert "model.layers.0.self_attn.q_norm.weight" in w["gemma3"]

    assert c["qwen3"]["model_type"] == "qwen3"
    assert "model.layers.0.self_attn.q_norm.weight" in w["qwen3"]
    assert "model.layers.0.self_attn.k_norm.weight" in w["qwen3"]

    # norm weights are random too (catches an engine that ignores them)
    assert w["llama"]["model.norm.weight"].std() > 0.01
    # same seed, different family -> different weights
    assert not torch.equal(
        w["llama"]["model.embed_tokens.weight"], w["mistral"]["model.embed_tokens.weight"]
    )


def test_llama_tied_variant_and_seed(tmp_path):
    a = tm.make_tiny_model("llama", str(tmp_path / "a"), tie_word_embeddings=True)
    b = tm.make_tiny_model("llama", str(tmp_path / "b"), tie_word_embeddings=True)
    s = tm.make_tiny_model("llama", str(tmp_path / "s"), seed=1, tie_word_embeddings=True)
    assert _config(a)["tie_word_embeddings"] is True
    wa, wb, ws = _weights(a), _weights(b), _weights(s)
    assert "lm_head.weight" not in wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # deterministic
    assert not torch.equal(wa["model.embed_tokens.weight"], ws["model.embed_tokens.weight"])
    out = tm.hf_greedy(a, tm.random_prompts(1000, 1, 8, 8, seed=0), 12)[0]
    assert len(out) == 12 and len(set(out)) > 1


def test_tokenizer_roundtrip_and_specials(tmp_path):
    from transformers import AutoTokenizer

    tm.build_tokenizer(str(tmp_path))
    assert os.path.exists(tmp_path / "tokenizer.json")
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 1000
    for s in ("héllo 世界 🎉", "naïve café — “quotes” 👨‍👩‍👧 🇫🇷", "def f(x):\n    return x * 2\n", "  "):
        ids = tok.encode(s, add_special_tokens=False)
        assert tok.decode(ids) == s
    assert [tok.convert_tokens_to_ids(t) for t in tm.SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert tok.pad_token_id == 0 and tok.bos_token is None
    # special tokens are never split, and the encoder adds nothing
    assert tok.encode("<|im_start|>user\nhi<|im_end|>")[0] == 1
    assert tok.encode("<|im_start|>user\nhi<|im_end|>")[-1] == 2
    # deterministic training
    with open(tmp_path / "tokenizer.json", "rb") as f:
        first = hashlib.sha256(f.read()).hexdigest()
    tm.build_tokenizer(str(tmp_path / "again"))
    with open(tmp_path / "again" / "tokenizer.json", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == first


def test_chat_template(tmp_path):
    from transformers import AutoTokenizer

    tm.build_tokenizer(str(tmp_path))
    with open(tmp_path / "tokenizer_config.json") as f:
        assert "chat_template" in json.load(f)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 世界"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nhéllo 世界<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    assert ids.count(1) == 2 and ids.count(2) == 2


@pytest.mark.parametrize("family,window", [("mistral", 32), ("gemma3", 16)])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hf_applies_sliding_window(models, tmp_path, family, window, attn):
    path = models[family]
    off = {"sliding_window": None} if family == "mistral" else {"sliding_window": 4096}
    nowin = tm.make_tiny_model(family, str(tmp_path / "nowin"), **off)  # same seed -> same weights
    prompt = tm.random_prompts(1000, 1, 2 * window + 8, 2 * window + 8, seed=3)[0]
    a = tm.hf_logprobs(path, prompt, attn_implementation=attn)
    b = tm.hf_logprobs(nowin, prompt, attn_implementation=attn)
    diff = (a - b).abs().amax(-1)
    # The window covers `window` tokens including the query: positions < window see the
    # whole prefix either way; from position `window` on the first token falls out.
    assert diff[:window].max() < 1e-5
    assert diff[window] > 1e-4
    assert diff[window:].min() > 1e-4


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_greedy_with_cache_matches_recompute_past_window(models, family):
    """HF's KV cache for sliding layers agrees with full recomputation (sanity of the reference)."""
    path = models[family]
    prompt = tm.random_prompts(1000, 1, 40, 40, seed=11)[0]
    n = 10
    out = tm.hf_greedy(path, [prompt], n)[0]
    lp = tm.hf_logprobs(path, prompt + out)
    assert lp[len(prompt) - 1 : -1].argmax(-1).tolist() == out


def test_hf_greedy_ignores_eos(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tm.make_tiny_model("llama", str(tmp_path / "m"))
    prompt = tm.random_prompts(1000, 1, 8, 8, seed=5)[0]
    first = tm.hf_greedy(path, [prompt], 4)[0][0]
    assert first != 2
    # Make EOS (id 2) the argmax at the first step: its lm_head row = 1.5 x the winner's.
    sd = load_file(os.path.join(path, "model.safetensors"))
    sd["lm_head.weight"][2] = 1.5 * sd["lm_head.weight"][first]
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    tm.clear_hf_cache()
    out = tm.hf_greedy(path, [prompt], 6)[0]
    assert out[0] == 2 and len(out) == 6


def test_random_prompts(tmp_path):
    a = tm.random_prompts(1000, 5, 3, 9, seed=1)
    assert a == tm.random_prompts(1000, 5, 3, 9, seed=1)
    assert a != tm.random_prompts(1000, 5, 3, 9, seed=2)
    assert len(a) == 5 and all(3 <= len(p) <= 9 for p in a)
    assert all(0 <= t < 1000 for p in a for t in p)
    tm.build_tokenizer(str(tmp_path))
    b = tm.random_prompts(str(tmp_path), 20, 10, 10, seed=0)
    assert all(t not in (0, 1, 2) for p in b for t in p)
