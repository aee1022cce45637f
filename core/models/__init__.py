"""Model families, looked up by the HF `architectures` name."""
from __future__ import annotations

from torch import nn

from octavo.config import ConfigError
from octavo.models.gemma3 import Gemma3ForCausalLM
from octavo.models.llama import LlamaForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
}


# GGUF-derived configs may carry only a model_type.
_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "gemma3_text": "Gemma3ForCausalLM", "gemma3": "Gemma3ForCausalLM"}


def model_class(hf_config) -> tuple[str, type[nn.Module]]:
    archs = list(getattr(hf_config, "architectures", None) or [])
    archs.append(_BY_MODEL_TYPE.get(hf_config.model_type, ""))
    for arch in archs:
        if arch in MODEL_REGISTRY:
            return arch, MODEL_REGISTRY[arch]
    raise ConfigError(f"unsupported architecture {hf_config.architectures}; "
                      f"supported: {sorted(MODEL_REGISTRY)}")
