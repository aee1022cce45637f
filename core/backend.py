"""The backend contract, version 4.1: the whole of the core that a device package sees.

A backend package registers one `Backend` subclass under the entry-point group
`octavo.backends` and imports nothing from `octavo` but this module (a test enforces it):
every core piece a backend may build on is exported here (`__all__`), the heavy ones loaded
on first use. When a backend needs more, the contract grows a hook and its version; the core
is never patched.

Versions are MAJOR.MINOR. A backend states the version it was written against
(`Backend.contract_version`); the core loads it when the majors are equal and the backend's
minor is no newer than the core's. A minor version only adds (exports, hooks with defaults,
fields with defaults); anything else is a new major.

What crosses the boundary is plain data that pickles, so a worker may live in another
process: each step the scheduler sends a `SchedulerOutput` (requests it has not sent before
whole, `NewRequestData`; then per step only what changed, `ScheduledRequest`), and the worker
keeps its own copy of the running requests (`RequestStates`). A step runs in two phases:
`Worker.execute_model` launches the forward pass, the engine fills the guided-decoding masks
on the host meanwhile, and `Worker.sample_tokens` samples with them (`GrammarBitmask`) and
returns a `ModelRunnerOutput`.

Under the pooling runner (`EngineConfig.runner == "pooling"`, embeddings) nothing is sampled:
a request whose step `samples` has ended its prompt, and `sample_tokens` returns its pooled
hidden state (`EngineConfig.pooler_config`) in `ModelRunnerOutput.pooler_output` instead. A
worker says it can (`Worker.supports_pooling`); `TorchWorker` does.

Backends whose model runs as the core's torch modules use `TorchWorker` with their
`AttentionBackend`, may fuse the models' small ops (`Backend.layer_ops`), may run
forward passes at static shapes (`Backend.step_graphs`: captured graphs, shapes compiled
just in time or ahead of time) and may sample their own way (`Backend.step_sampler`: a
`StepSampler` subclass, e.g. at static shapes). Backends with their own graph runtime
implement `Worker` themselves and can still use the core's sampler (`StepSampler`).

Versions: 4.0 the plain-data step, two-phase workers, typed options, static shapes; 4.1 (below)
adds, among others, tensor parallelism: a backend with a `distributed_backend` runs one worker
per rank (`create_worker(config, rank)`, `ParallelRank`), its ranks talking through the
`Communicator` that `Backend.communicator` supplies.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from octavo.config import ConfigError, EngineConfig, ModelConfig, PoolerConfig, parse_dtype
from octavo.sampling_params import SamplingParams

if TYPE_CHECKING:
    from octavo.models.ops import LayerOps
    from octavo.sample.ops import SamplerOps
    from octavo.sample.step_sampler import StepSampler

CONTRACT_VERSION = "4.2"
# 4.2 adds DecoderLayer and DecoderLayerParts: a backend may run a whole decoder layer of its
# own loaded model as one call (`DecoderLayer.fused`), for the layers whose `parts()` it takes.
# 4.1 adds (a minor: only additions with defaults):
#   - for runtimes that build the model in a graph of their own: the exports model_config_for,
#     head_dim_of, sliding_window_of, rope_inv_freq, prompt_logprobs, num_blocks_for_memory;
#   - Backend.chunked_prefill and Backend.prompt_logprobs (False: the device has no chunked
#     prefill / no logits of prompt positions);
#   - for runtimes that compile the sampling too: Backend.step_sampler, the sampling half of
#     each TorchWorker step, a StepSampler; the runner calls its new sample_hidden and
#     prompt_logprobs each step and runs the tasks of its new warm_up after the captures, with
#     a progress bar (PromptChunk, LogitsFn, DummyStepFn, WarmUpTask, grammar_masks and
#     record_logprobs exported);
#   - Backend.inference_mode (False: steps run under torch.no_grad);
#   - Availability.auto (False: `--device auto` never picks the backend, e.g. a testing mode);
#   - pad_inputs pads logits_indices to shape.num_reqs entries;
#   - TorchWorker.kv_memory_budget (TorchWorker.num_kv_blocks sizes the cache from it);
#   - tensor parallelism: ParallelRank, Communicator (TorchCommunicator exported),
#     Backend.distributed_backend, Backend.ray_resource, Backend.communicator, and the `rank`
#     argument of Backend.create_worker and TorchWorker;
#   - for backends that multiply GGUF weights in their blocks: QuantizedTensor,
#     Backend.quantized_types, the quantized_types argument of iter_model_weights (a
#     tensor-parallel rank always dequantizes); TorchWorker.new_kv_cache;
#   - the pooling runner (embeddings): EngineConfig.runner, PoolerConfig,
#     ModelRunnerOutput.pooler_output, Worker.supports_pooling, the export pool.
ENTRY_POINT_GROUP = "octavo.backends"


def version_mismatch(backend_version: str, core_version: str = CONTRACT_VERSION) -> str | None:
    """Why a backend written against `backend_version` cannot load here (None: it can)."""
    try:
        major, minor = (int(part) for part in str(backend_version).split("."))
    except ValueError:
        return f"declares backend contract {backend_version!r}, not MAJOR.MINOR"
    core_major, core_minor = (int(part) for part in core_version.split("."))
    if major != core_major or minor > core_minor:
        return (f"written for backend contract {backend_version}; this octavo speaks {core_version} "
                f"(it loads {core_major}.0 to {core_version})")
    return None


# ----------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class Availability:
    """Whether a backend can run here; `reason` tells a person why not (or, when it runs only
    by name, on what)."""

    ok: bool
    reason: str = ""
    auto: bool = True  # False: only `--device NAME` selects it (a testing mode, an emulator), never auto


# ----------------------------------------------------------------------------- options


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A field of a `BackendOptions` dataclass: its default and its `--help` line.

    The command-line flag is `--` + the field name with dashes (`flag` overrides it); the
    YAML config key and the `LLM(...)` keyword are the field name.
    """
    metadata = {"help": help, "flag": flag}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class BackendOptions:
    """A backend's own settings. Subclass it as a `@dataclass` of `option(...)` fields and
    name it in `Backend.options_class`; the core turns the fields into a group of flags in
    `octavo serve/generate --help`, YAML keys and `LLM(...)` keywords, converts the user's
    values to the fields' types (bool, int, float, str, lists of those, `X | None`,
    `Literal[...]`) and hands the backend the typed instance (`Backend.options`).
    """

    def validate(self, config: EngineConfig) -> None:
        """Check values against each other and the engine config, fill in defaults that
        depend on it; raise ConfigError naming the option."""


# ----------------------------------------------------------------------------- one step


@dataclass(slots=True)
class NewRequestData:
    """A request the worker has not seen, or one resumed after a preemption: sent whole once."""

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # non-empty when resumed after a preemption (recompute)
    sampling_params: SamplingParams
    eos_token_id: int | None  # blocked until min_tokens, unless ignore_eos


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step, as changes since the worker last saw it.

    Tokens [num_computed_tokens, num_computed_tokens + num_new_tokens) run now.
    """

    request_id: str
    num_computed_tokens: int
    num_new_tokens: int
    new_token_ids: list[int]  # appended to the request since the last step that scheduled it
    new_block_ids: list[int]  # likewise its KV blocks (for a new request: all of them)
    samples: bool  # the step reaches the last known token, so one is sampled (pooling runner: pooled)


@dataclass(slots=True)
class SchedulerOutput:
    new_requests: list[NewRequestData]  # their ScheduledRequest is in `requests` too
    requests: list[ScheduledRequest]  # in step order
    num_batched_tokens: int
    block_size: int
    finished_request_ids: set[str] = field(default_factory=set)  # drop their state


@dataclass(slots=True)
class GrammarBitmask:
    """Guided decoding's token masks for one step, handed to `Worker.sample_tokens`.

    Row i constrains the token sampled for `SchedulerOutput.requests[rows[i]]` (always a
    request that samples). `bitmask` is int32 [len(rows), ceil(vocab / 32)] on the CPU, bit j
    of word k set = token 32 * k + j allowed; ids past the mask's width (logits wider than
    the tokenizer's vocabulary) are not. `StepSampler` applies it.
    """

    rows: list[int]
    bitmask: torch.Tensor


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
    # Pooling runner: request id -> its pooled hidden state ([hidden], float32, CPU), for each
    # request that `samples` this step (since 4.1)
    pooler_output: dict[str, torch.Tensor] = field(default_factory=dict)


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

    @property
    def num_tokens(self) -> int:
        return self.slot_mapping.shape[0]


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


# ----------------------------------------------------------------------------- static shapes

ForwardFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""The model's forward pass: (input_ids [T], positions [T], attention metadata) on the
device -> hidden states [T, hidden]."""


@dataclass(frozen=True, slots=True, order=True)
class StepShape:
    """A padded step: `num_tokens` scheduled tokens over `num_reqs` requests."""

    num_tokens: int
    num_reqs: int


class StepGraphs(ABC):
    """Static-shape forward passes for devices that capture or compile them (graph capture,
    compilation per shape, ahead-of-time buckets).

    `TorchWorker.warm_up` captures every shape of `shapes()`, in that order, and runs each
    once after its capture (on the dummy step, writing only to `pad_slot`). Each step, the
    runner asks `shape_for` for the step's shape; it pads the step to it (`pad_inputs`:
    padding requests have no tokens, padding tokens write to `pad_slot`, block tables are
    `block_table_width` wide, `logits_indices` `num_reqs` long), moves it to the device with
    the attention backend's metadata and gets the hidden states of every padded token from
    `run`; the step's `StepSampler` gets them whole. Steps without a shape run eagerly.
    """

    pad_slot: int = -1  # slot_mapping of padding tokens; -1: the kernels skip the write
    block_table_width: int | None = None  # pad block tables to this many columns (None: as they come)

    @abstractmethod
    def shapes(self) -> list[StepShape]:
        """Every shape to capture or compile in warm-up."""

    def shape_for(self, layout: BatchLayout) -> StepShape | None:
        """The smallest shape that holds the step; None: run it eagerly."""
        shapes = sorted(self.shapes())
        fits = [s for s in shapes[bisect_left(shapes, StepShape(layout.num_tokens, 0)):]
                if s.num_reqs >= layout.num_reqs]
        return fits[0] if fits else None

    @abstractmethod
    def capture(self, shape: StepShape, forward: ForwardFn, input_ids: torch.Tensor, positions: torch.Tensor,
                metadata: Any) -> None:
        """Capture or compile `forward` for `shape`; the inputs are a padded step of that
        shape on the device (`forward(input_ids, positions, metadata)` runs it eagerly)."""

    @abstractmethod
    def run(self, shape: StepShape, input_ids: torch.Tensor, positions: torch.Tensor, metadata: Any) -> torch.Tensor:
        """Hidden states [shape.num_tokens, hidden] of a step padded to `shape`, launched: a
        device that runs lazily starts the step here, without waiting for it."""


# ----------------------------------------------------------------------------- tensor parallelism (4.1)


@dataclass(frozen=True, slots=True)
class ParallelRank:
    """One worker's place among the processes of an engine.

    `rank` of `world_size` is its tensor-parallel rank: which shard of the weights it holds
    and who it talks to (`init_method` is the ranks' torch.distributed rendezvous,
    tcp://host:port). `local_rank` of `local_world_size` counts every worker process on this
    node, those of the other data-parallel replicas included: the backend picks the device
    (the local_rank-th accelerator) or the cores (its share of the CPU) from it.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    init_method: str


class Communicator(ABC):
    """Collectives among the tensor-parallel ranks of one engine, one per worker; the core's
    parallel layers call them (all-reduce after row-parallel linears and the vocab-parallel
    embedding, gather of the vocab-parallel logits). Every rank calls the same collectives
    in the same order."""

    def __init__(self, rank: int, world_size: int):
        self.rank = rank
        self.world_size = world_size

    @abstractmethod
    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise sum of every rank's x (may reuse x's memory)."""

    @abstractmethod
    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's x, concatenated along `dim` in rank order."""

    def gather(self, x: torch.Tensor, dim: int = -1, dst: int = 0) -> torch.Tensor | None:
        """As all_gather, on rank `dst` only (None on the others)."""
        out = self.all_gather(x, dim)
        return out if self.rank == dst else None

    def shutdown(self) -> None:
        """Leave the group."""


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

    supports_pooling: ClassVar[bool] = False  # runs the pooling runner (see the module doc; since 4.1)

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
    def execute_model(self, batch: SchedulerOutput) -> None:
        """Apply the step's changes to the worker's requests and launch the forward pass.

        Keeps what `sample_tokens` needs; an asynchronous device need not wait for it here.
        """

    @abstractmethod
    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        """Sample the last step's tokens (guided rows masked by `grammar`), with logprobs."""

    def shutdown(self) -> None:
        """Release device memory and threads."""


# ----------------------------------------------------------------------------- backend


class Backend(ABC):
    """A device. Subclasses set the class attributes and implement the abstract methods."""

    name: ClassVar[str]
    contract_version: ClassVar[str]  # the contract version this backend was written against
    priority: ClassVar[int] = 0  # `--device auto` picks the available backend with the highest
    options_class: ClassVar[type[BackendOptions]] = BackendOptions  # its own settings (none by default)
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32,)
    kv_cache_dtypes: ClassVar[tuple[str, ...]] = ("auto",)
    quantizations: ClassVar[tuple[str, ...]] = ()  # executed natively (GGUF dequantizes at load)
    default_block_size: ClassVar[int] = 16
    supported_block_sizes: ClassVar[tuple[int, ...] | None] = None  # None: any positive size
    architectures: ClassVar[tuple[str, ...] | None] = None  # HF architecture names; None: all the core's
    # False: TorchWorker steps run under torch.no_grad, not torch.inference_mode (for tensors
    # that cannot be inference tensors, like lazy tensors).
    inference_mode: ClassVar[bool] = True
    # Since 4.1. False: each step runs a prompt's uncached part whole (the engine turns chunked
    # prefill off and needs max_num_batched_tokens >= max_model_len).
    chunked_prefill: ClassVar[bool] = True
    # Since 4.1. False: the worker never has logits of prompt positions (the engine rejects
    # requests for prompt logprobs at admission).
    prompt_logprobs: ClassVar[bool] = True
    # The torch.distributed backend its tensor-parallel ranks talk through ("gloo", "nccl"; 4.1).
    # None: the device runs one rank per engine (no --tensor-parallel-size above 1).
    distributed_backend: ClassVar[str | None] = None
    # The Ray resource one worker process takes ("GPU" for the GPU backends; 4.1), for
    # --distributed-executor-backend ray.
    ray_resource: ClassVar[str] = "CPU"
    # Since 4.1. GGUF tensor types whose linears the backend multiplies in their blocks
    # (`QuantizedTensor`); the others dequantize to the model's dtype at load.
    quantized_types: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: BackendOptions | None = None):
        self.options = options if options is not None else self.options_class()

    @classmethod
    @abstractmethod
    def availability(cls) -> Availability:
        """Cheap check (no device initialisation beyond a query) whether this can run here."""

    def default_dtype(self) -> torch.dtype:
        return self.supported_dtypes[0]

    def check_and_update_config(self, config: EngineConfig) -> None:
        """Fill in device defaults and reject what the device cannot do (raise ConfigError).

        Overrides call this first; it ends with `self.options.validate(config)`.
        """
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
        if not self.chunked_prefill:
            config.enable_chunked_prefill = False
        self.options.validate(config)

    @abstractmethod
    def create_worker(self, config: EngineConfig, rank: ParallelRank | None = None) -> Worker:
        """The worker of one engine process. `rank` (4.1) comes only to backends with a
        `distributed_backend`, in engines of more than one worker process (tensor or data
        parallel; each process calls this once): the worker holds that rank's shard, on the
        device or cores `rank.local_rank` picks. None: the engine's only worker."""

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

    def step_graphs(self, config: EngineConfig, model_config: ModelConfig,
                    device: torch.device) -> StepGraphs | None:
        """Static-shape forward passes for `TorchWorker` (None: every step runs eagerly)."""
        return None

    def step_sampler(self, config: EngineConfig, model_config: ModelConfig, device: torch.device) -> StepSampler:
        """The sampling half of each `TorchWorker` step: the core's sampler over `sampler_ops()`.
        Subclass `StepSampler` to sample at static shapes or in a compiled graph (override
        `sample_hidden`, `prompt_logprobs` and `warm_up`)."""
        from octavo.sample.step_sampler import StepSampler

        return StepSampler(self.sampler_ops(), device)

    def communicator(self, rank: ParallelRank, device: torch.device) -> Communicator:
        """This rank's collectives (4.1): torch.distributed over `distributed_backend` by
        default; override with the device's own (a shared-memory all-reduce, a vendor library)."""
        from octavo.distributed import TorchCommunicator

        return TorchCommunicator(self.distributed_backend, rank, device)


# ----------------------------------------------------------------------------- the surface

# Core pieces a backend may build on, loaded on first use (`from octavo.backend import X`):
# importing this module stays cheap, so `octavo devices` can list backends quickly.
_LAZY = {
    "ForwardContext": "octavo.models.layers",
    "LayerOps": "octavo.models.ops",
    "Rope": "octavo.models.ops",
    "SamplerOps": "octavo.sample.ops",
    "StepSampler": "octavo.sample.step_sampler",
    "PromptChunk": "octavo.sample.step_sampler",
    "LogitsFn": "octavo.sample.step_sampler",
    "DummyStepFn": "octavo.sample.step_sampler",
    "WarmUpTask": "octavo.sample.step_sampler",
    "grammar_masks": "octavo.sample.step_sampler",
    "record_logprobs": "octavo.sample.step_sampler",
    "pool": "octavo.worker.pooler",
    "RequestState": "octavo.worker.states",
    "RequestStates": "octavo.worker.states",
    "StepInputs": "octavo.worker.model_runner",
    "prepare_inputs": "octavo.worker.model_runner",
    "pad_inputs": "octavo.worker.model_runner",
    "ModelRunner": "octavo.worker.model_runner",
    "TorchWorker": "octavo.worker.torch_worker",
    "resolve_model_path": "octavo.loader",
    "load_hf_config": "octavo.loader",
    "iter_model_weights": "octavo.loader",
    # 4.1, for backends that build the model in a graph runtime of their own: the model's
    # shapes, the per-layer attention facts and rotary frequencies the core's models use,
    # prompt logprobs from logits, and the KV sizing rule of --kv-cache-memory.
    "model_config_for": "octavo.loader",
    "head_dim_of": "octavo.models.llama",
    "sliding_window_of": "octavo.models.llama",
    "rope_inv_freq": "octavo.models.layers",
    "prompt_logprobs": "octavo.sample.step_sampler",
    "num_blocks_for_memory": "octavo.kv_cache",
    "TorchCommunicator": "octavo.distributed",
    # 4.2: fused decoder layers.
    "DecoderLayer": "octavo.models.layers",
    "DecoderLayerParts": "octavo.models.layers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    # contract and identity
    "CONTRACT_VERSION", "ENTRY_POINT_GROUP", "version_mismatch", "Availability", "Backend", "Worker",
    "BackendOptions", "option",
    # configuration
    "EngineConfig", "ModelConfig", "PoolerConfig", "ConfigError", "parse_dtype", "SamplingParams",
    # the step
    "NewRequestData", "ScheduledRequest", "SchedulerOutput", "GrammarBitmask", "TokenLogprobs",
    "ModelRunnerOutput",
    # attention and static shapes
    "AttentionSpec", "BatchLayout", "AttentionBackend", "ForwardFn", "StepShape", "StepGraphs",
    # tensor parallelism
    "ParallelRank", "Communicator",
    # weights
    "QuantizedTensor",
    # core pieces (loaded on first use)
    *_LAZY,
]
