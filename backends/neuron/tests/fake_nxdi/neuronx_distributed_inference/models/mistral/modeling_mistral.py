"""MistralInferenceConfig and NeuronMistralForCausalLM (fake: the HF model runs in place of the graphs)."""
from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class MistralInferenceConfig(InferenceConfig):
    pass


class NeuronMistralForCausalLM(NeuronBaseForCausalLM):
    @classmethod
    def get_config_cls(cls):
        return MistralInferenceConfig
