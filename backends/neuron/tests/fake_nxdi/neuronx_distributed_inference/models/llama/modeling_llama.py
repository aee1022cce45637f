"""LlamaInferenceConfig and NeuronLlamaForCausalLM (fake: the HF model runs in place of the graphs)."""
from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class LlamaInferenceConfig(InferenceConfig):
    pass


class NeuronLlamaForCausalLM(NeuronBaseForCausalLM):
    @classmethod
    def get_config_cls(cls):
        return LlamaInferenceConfig
