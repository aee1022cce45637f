"""NeuronConfig, OnDeviceSamplingConfig and InferenceConfig: the fields octavo-neuron sets."""
from __future__ import annotations

import json
import os

import torch

CONFIG_FILE = "neuron_config.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class OnDeviceSamplingConfig:
    def __init__(self, *, do_sample: bool = False, top_k: int = 1, top_p: float = 1.0, temperature: float = 1.0,
                 dynamic: bool = False, deterministic: bool = False, global_topk: int = 256):
        self.do_sample, self.top_k, self.top_p, self.temperature = do_sample, top_k, top_p, temperature
        self.dynamic, self.deterministic, self.global_topk = dynamic, deterministic, global_topk


class NeuronConfig:
    """Compile-time settings. Only the keyword arguments below exist in the fake (the real
    class has many more); any other raises TypeError."""

    def __init__(self, *, tp_degree: int = 1, batch_size: int = 1, ctx_batch_size: int | None = None,
                 tkg_batch_size: int | None = None, seq_len: int = 128, max_context_length: int | None = None,
                 torch_dtype: str | torch.dtype = torch.bfloat16, padding_side: str = "right",
                 enable_bucketing: bool = False, context_encoding_buckets: list[int] | None = None,
                 prefix_buckets: list[int] | None = None, token_generation_buckets: list[int] | None = None,
                 is_continuous_batching: bool = False,
                 on_device_sampling_config: OnDeviceSamplingConfig | dict | None = None,
                 output_logits: bool = False, is_block_kv_layout: bool = False, is_prefix_caching: bool = False,
                 pa_num_blocks: int | None = None, pa_block_size: int | None = None):
        self.tp_degree = tp_degree
        self.batch_size = batch_size
        self.ctx_batch_size = batch_size if ctx_batch_size is None else ctx_batch_size
        self.tkg_batch_size = batch_size if tkg_batch_size is None else tkg_batch_size
        self.seq_len = self.max_length = seq_len
        self.max_context_length = seq_len if max_context_length is None else max_context_length
        self.torch_dtype = _DTYPES[torch_dtype] if isinstance(torch_dtype, str) else torch_dtype
        self.padding_side = padding_side
        self.enable_bucketing = enable_bucketing
        self.context_encoding_buckets = sorted(context_encoding_buckets) if context_encoding_buckets else None
        self.prefix_buckets = sorted(prefix_buckets) if prefix_buckets else None
        self.token_generation_buckets = sorted(token_generation_buckets) if token_generation_buckets else None
        self.is_continuous_batching = is_continuous_batching
        if isinstance(on_device_sampling_config, dict):
            on_device_sampling_config = OnDeviceSamplingConfig(**on_device_sampling_config)
        self.on_device_sampling_config = on_device_sampling_config
        self.output_logits = output_logits
        self.is_block_kv_layout = is_block_kv_layout
        self.is_prefix_caching = is_prefix_caching
        self.pa_num_blocks = batch_size if pa_num_blocks is None else pa_num_blocks
        self.pa_block_size = seq_len if pa_block_size is None else pa_block_size
        if self.context_encoding_buckets and self.context_encoding_buckets[-1] > self.max_context_length:
            raise AssertionError(f"Context bucket {self.context_encoding_buckets[-1]} should be <= "
                                 f"{self.max_context_length}")
        if self.token_generation_buckets and self.token_generation_buckets[-1] > self.max_length:
            raise AssertionError(f"Token generation bucket {self.token_generation_buckets[-1]} should be <= "
                                 f"{self.max_length}")

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["torch_dtype"] = str(self.torch_dtype).split(".")[1]
        if self.on_device_sampling_config is not None:
            d["on_device_sampling_config"] = vars(self.on_device_sampling_config)
        del d["max_length"]
        return d


class InferenceConfig:
    """NeuronConfig plus the model's attributes (from the HF config through `load_config`)."""

    def __init__(self, neuron_config: NeuronConfig, load_config=None, **kwargs):
        self.neuron_config = neuron_config
        if load_config is not None:
            load_config(self)
        for key, value in kwargs.items():
            setattr(self, key, value)

    def to_json_string(self) -> str:
        d = {k: v for k, v in vars(self).items() if k != "neuron_config"}
        d["neuron_config"] = self.neuron_config.to_dict()
        return json.dumps(d, indent=2, sort_keys=True, default=str)

    def save(self, model_path: str) -> None:
        os.makedirs(model_path, exist_ok=True)
        with open(os.path.join(model_path, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(self.to_json_string() + "\n")

    @classmethod
    def load(cls, model_path: str, **kwargs) -> InferenceConfig:
        with open(os.path.join(model_path, CONFIG_FILE), encoding="utf-8") as f:
            d = json.load(f)
        d.update(kwargs)
        neuron_config = cls.get_neuron_config_cls()(**d.pop("neuron_config"))
        return cls(neuron_config, **d)

    @classmethod
    def get_neuron_config_cls(cls) -> type[NeuronConfig]:
        return NeuronConfig
