"""The backend contract, version 3: everything a device package implements, in one place.

A backend package registers one `Backend` subclass under the entry-point group
`octavo.backends`. The core talks to a device only through the classes below, and a backend
needs nothing from the core beyond them: if it does, the contract grows a hook (and its
version), the core is never patched.

Data crossing the boundary is device-neutral: the scheduler hands a `SchedulerOutput`
(per-request token ids, computed-token counts, block ids, sampling params, and for guided
decoding a token bitmask) to `Worker.execute`, which returns a `ModelRunnerOutput` (sampled
ids, logprobs) as plain Python lists. Block ids are the only thing the core knows of the KV
cache; the backend owns its physical layout (`AttentionBackend.kv_cache_shape`) and how many
blocks fit (`Worker.num_kv_blocks`).

Backends whose model runs as torch modules on a torch device reuse the core's
`octavo.worker.TorchWorker` and supply an `AttentionBackend`, and may fuse the models' norms
and rotary embeddings (`Backend.layer_ops`); backends with their own graph runtime implement
`Worker` themselves.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

if TYPE_CHECKING:
    from octavo.config import EngineConfig, ModelConfig
    from octavo.models.ops import LayerOps
    from octavo.sample.ops import SamplerOps
    from octavo.sampling_params import SamplingParams

CONTRACT_VERSION = 3  # 2: SchedulerOutput.grammar; 3: Backend.layer_ops; QuantizedTensor, Backend.quantized_types
ENTRY_POINT_GROUP = "octavo.backends"


# ----------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a backend can run here; `reason` tells a person why not."""

    ok: bool
    reason: str = ""


# ----------------------------------------------------------------------------- one step


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step: tokens [num_computed_tokens, +num_new_tokens) run now."""

    request_id: str
    token_ids: list[int]  # prompt + output so far; the runner reads only the new slice
    num_prompt_tokens: int
    num_computed_tokens: int
    num_new_tokens: int
    block_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None  # blocked until min_tokens, unless ignore_eos
    samples: bool  # the step ends at the last known token, so a token is sampled

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]


@dataclass(slots=True)
class GrammarBitmask:
    """Guided decoding's token masks for one step.

    Row i of `tensor()` constrains the token sampled for `SchedulerOutput.requests[rows[i]]`
    (always a request that samples): int32 [len(rows), ceil(vocab / 32)] on the CPU, bit j
    of word k set = token 32 * k + j allowed; ids past the mask's width (logits wider than
    the tokenizer's vocabulary) are not. The scheduler's grammars fill it on the first
    `tensor()` call, so a worker that launches its forward pass first has the CPU fill the
    masks while the device computes (vLLM overlaps them too).

    The core's `Sampler` applies it (`SamplingMetadata` carries it to the device): a worker
    built on `ModelRunner` has nothing to do, one with a sampler of its own must apply it.
    """

    rows: list[int]  # indices into SchedulerOutput.requests
    fill: Callable[[], torch.Tensor]
    _tensor: torch.Tensor | None = None

    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            self._tensor = self.fill()
        return self._tensor


@dataclass(slots=True)
class SchedulerOutput:
    requests: list[ScheduledRequest]
    num_batched_tokens: int
    block_size: int
    finished_request_ids: set[str] = field(default_factory=set)  # drop per-request state
    grammar: GrammarBitmask | None = None  # None when no request that samples is guided


@dataclass(slots=True)
class TokenLogprobs:
    """Logprobs at some positions: per position the chosen token first, then the top-k."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]  # rank of the chosen token in the full distribution (1 = most likely)


@dataclass(slots=True)
class ModelRunnerOutput:
    sampled_token_ids: list[int]  # one per scheduled request, -1 where none was sampled
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    prompt_logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)


# ----------------------------------------------------------------------------- attention


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """What one attention layer asks of the kernel."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None = None  # attend to the last `sliding_window` positions
    logit_softcap: float | None = None


@dataclass(slots=True)
class BatchLayout:
    """A step's varlen batch, as host tensors; the runner builds it, backends read it.

    Requests may be in any order and mix prefill chunks (query_len > 1) with decodes.
    """

    query_start_loc: torch.Tensor  # [B + 1] int32, offsets of each request's tokens
    seq_lens: torch.Tensor  # [B] int32, context length once this step's tokens are in
    block_tables: torch.Tensor  # [B, max_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64, block_id * block_size + offset per new token
    max_query_len: int
    max_seq_len: int
    block_size: int

    @property
    def num_reqs(self) -> int:
        return self.seq_lens.shape[0]


class AttentionBackend(ABC):
    """Paged attention over block tables, for mixed prefill + decode batches."""

    @abstractmethod
    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int) -> tuple[int, ...]:
        """Shape of one layer's cache tensor (it holds both K and V)."""

    @abstractmethod
    def build_metadata(self, layout: BatchLayout, device: torch.device) -> Any:
        """Once per step: whatever the kernels need, on the device."""

    @abstractmethod
    def forward(self, spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, metadata: Any) -> torch.Tensor:
        """Write k, v [T, kv_heads, D] through the slot mapping, attend with q [T, heads, D].

        Returns [T, heads, D].
        """


# ----------------------------------------------------------------------------- weights


@dataclass(slots=True)
class QuantizedTensor:
    """A linear layer's weight kept in a GGUF block format, for backends that multiply such
    weights as they are (`Backend.quantized_types`): the file's bytes, one row of blocks per
    output feature.

    The loader attaches these to the model's linears (`nn.Linear`, `MergedLinear`) as
    `module.quantized_weights`, one entry per shard (q/k/v, gate/up; a plain Linear has one);
    None marks a shard whose type the backend does not take, loaded dense into its rows of
    `module.weight` as usual. The other rows of `weight` are left unfilled: the backend
    replaces such modules with its own before the first step (the core never runs a linear
    that has `quantized_weights`). A Q4_K_M file mixes types, so one merged linear may too.
    """

    qtype: str  # GGUF type name, e.g. "Q4_K"
    data: torch.Tensor  # uint8 [out_features, bytes per row]
    shape: tuple[int, int]  # the dense weight's [out_features, in_features]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense weight (the `gguf` package's dequantization: the reference)."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        values = dequantize(self.data.numpy(), GGMLQuantizationType[self.qtype])
        return torch.from_numpy(values).reshape(self.shape).to(dtype)


# ----------------------------------------------------------------------------- worker


class Worker(ABC):
    """Owns the model and KV cache on one device and runs scheduled steps."""

    @abstractmethod
    def load_model(self) -> ModelConfig:
        """Load weights; return the model's shapes (the core sizes the KV cache from them)."""

    @abstractmethod
    def num_kv_blocks(self, block_size: int) -> int:
        """How many KV blocks fit: profiled, or from the configured memory."""

    @abstractmethod
    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None: ...

    def warm_up(self) -> None:
        """Compile, capture graphs, touch kernels: anything to keep off the first request."""

    @abstractmethod
    def execute(self, batch: SchedulerOutput) -> ModelRunnerOutput: ...

    def shutdown(self) -> None:
        """Release device memory and threads."""


# ----------------------------------------------------------------------------- backend


class Backend(ABC):
    """A device. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    priority: ClassVar[int] = 0  # `--device auto` picks the available backend with the highest
    contract_version: ClassVar[int] = CONTRACT_VERSION
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32,)
    kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    quantizations: ClassVar[tuple[str, ...]] = ()  # executed natively (GGUF dequantizes at load)
    # GGUF tensor types whose linears the backend multiplies as they are (QuantizedTensor);
    # others dequantize to the model's dtype at load.
    quantized_types: ClassVar[frozenset[str]] = frozenset()
    default_block_size: ClassVar[int] = 16
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = None  # None: any positive size

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Cheap check (no device initialisation beyond a query) whether this can run here."""

    def default_dtype(self) -> torch.dtype:
        return self.supported_dtypes[0]

    def check_and_update_config(self, config: EngineConfig) -> None:
        """Fill in device defaults and reject what the device cannot do (raise ConfigError)."""
        from octavo.config import ConfigError, parse_dtype

        if config.block_size is None:
            config.block_size = self.default_block_size
        if self.supported_block_sizes and config.block_size not in self.supported_block_sizes:
            raise ConfigError(f"{self.name} supports block sizes {self.supported_block_sizes}, "
                              f"got {config.block_size}")
        if config.block_size <= 0:
            raise ConfigError(f"block_size must be positive, got {config.block_size}")
        config.dtype = self.default_dtype() if config.dtype == "auto" else parse_dtype(config.dtype)
        if config.dtype not in self.supported_dtypes:
            raise ConfigError(f"{self.name} supports dtypes {self.supported_dtypes}, got {config.dtype}")
        if config.kv_cache_dtype not in self.kv_cache_dtypes:
            raise ConfigError(f"{self.name} supports kv cache dtypes {self.kv_cache_dtypes}, "
                              f"got {config.kv_cache_dtype!r}")

    @abstractmethod
    def create_worker(self, config: EngineConfig) -> Worker: ...

    # Optional hooks. The defaults are the core's device-neutral torch code.

    def sampler_ops(self) -> SamplerOps:
        """Sampling primitives (top-k/top-p masking, random draws); override with faster kernels."""
        from octavo.sample.ops import SamplerOps

        return SamplerOps()

    def layer_ops(self) -> LayerOps:
        """The core models' RMSNorms (with the residual add before them), rotary embeddings and
        gated-MLP activations; `TorchWorker` builds the model with these. Override with fused
        kernels."""
        from octavo.models.ops import LayerOps

        return LayerOps()
