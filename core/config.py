"""Engine configuration: what the user asked for, then what the model and backend settled."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {sorted(set(DTYPES))} or 'auto'") from None


RUNNERS = ("generate", "pooling")
POOLING_TYPES = ("LAST", "MEAN")


@dataclass(slots=True)
class PoolerConfig:
    """How the pooling runner turns a prompt's hidden states into one embedding (vLLM's names)."""

    pooling_type: str = "LAST"  # LAST: the last token's final hidden state; MEAN: their average over the prompt
    normalize: bool = True  # L2-normalise (a request's PoolingParams.normalize wins)
    is_matryoshka: bool = False  # a request may ask for fewer `dimensions` (truncated, then renormalised)
    matryoshka_dimensions: list[int] | None = None  # the only `dimensions` it may ask for, when given

    def __post_init__(self) -> None:
        if self.pooling_type not in POOLING_TYPES:
            raise ConfigError(f"pooling_type must be one of {', '.join(POOLING_TYPES)}, got {self.pooling_type!r}")


@dataclass(slots=True)
class EngineConfig:
    """Every knob of the engine. `None` means: let the model or the backend decide."""

    model: str | None = None
    tokenizer: str | None = None
    device: str = "auto"
    dtype: str | torch.dtype = "auto"
    max_model_len: int | None = None
    seed: int = 0
    runner: str = "generate"  # or "pooling": embeddings (LLM.embed, /v1/embeddings) instead of text
    pooler_config: PoolerConfig | None = None  # pooling runner: from the model's files unless given
    # Scheduling.
    max_num_seqs: int = 128
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    # KV cache.
    block_size: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_memory: int | None = None  # bytes; the backend picks a default
    num_kv_blocks: int | None = None  # overrides memory sizing (tests, tuning)
    kv_cache_dtype: str = "auto"
    max_logprobs: int = 20
    guided_decoding_backend: str = "xgrammar"  # or "llguidance"; a request may name its own
    generation_config: str = "auto"  # sampling defaults: the model's (auto), none (vllm), or a directory's
    override_generation_config: dict[str, Any] | None = None
    # Parallelism (vLLM's names). Worker processes: tensor_parallel_size per engine, one
    # engine per data-parallel replica; pipeline parallelism is not supported (only 1).
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "mp" or "ray"; None: mp, in-process for one worker
    # The device's own settings as the user gave them (option name -> value); the engine
    # parses them into the backend's typed options (`Backend.options_class`).
    device_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """The engine's fields by name; any other keyword is a device option
        (`LLM(model, device=NAME, some_option=value)`, as vLLM's LLM takes them)."""
        names = {f.name for f in fields(cls)}
        options = {**kwargs.pop("device_options", {}), **{k: kwargs.pop(k) for k in list(kwargs) if k not in names}}
        return cls(**kwargs, device_options=options)


@dataclass(slots=True)
class ModelConfig:
    """Shapes and limits of the loaded model, device-neutral."""

    architecture: str
    hf_config: Any
    dtype: torch.dtype
    max_model_len: int
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def kv_bytes_per_block(self, block_size: int, kv_dtype: torch.dtype) -> int:
        """Bytes one KV block takes over all layers (K and V)."""
        elem = torch.empty((), dtype=kv_dtype).element_size()
        return 2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * elem
