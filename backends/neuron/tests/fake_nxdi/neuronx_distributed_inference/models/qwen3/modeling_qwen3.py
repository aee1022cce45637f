"""Qwen3InferenceConfig and NeuronQwen3ForCausalLM (fake: the HF model runs in place of the graphs)."""
from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class Qwen3InferenceConfig(InferenceConfig):
    pass


class NeuronQwen3ForCausalLM(NeuronBaseForCausalLM):
    @classmethod
    def get_config_cls(cls):
        return Qwen3InferenceConfig
