"""load_pretrained_config: the `load_config` hook that copies a HF config into an InferenceConfig."""
from __future__ import annotations

from transformers import AutoConfig


def load_pretrained_config(model_path_or_name=None, hf_config=None):
    if (model_path_or_name is None) == (hf_config is None):
        raise ValueError('Please provide only one of "model_path_or_name" or "hf_config"')

    def load_config(self) -> None:
        config = hf_config if hf_config is not None else AutoConfig.from_pretrained(model_path_or_name)
        values = config.to_dict()
        values.pop("dtype", None)
        values.pop("torch_dtype", None)
        self.__dict__.update(values)

    return load_config
