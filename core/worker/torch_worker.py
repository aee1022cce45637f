"""The worker for backends that run the core's torch modules on a torch device."""
from __future__ import annotations

import torch

from octavo.backend import (AttentionBackend, Backend, Communicator, EngineConfig, GrammarBitmask, ModelConfig,
                            ModelRunnerOutput, ParallelRank, SchedulerOutput, Worker)
from octavo.distributed import SingleRank
from octavo.kv_cache import num_blocks_for_memory
from octavo.loader import load_model
from octavo.models.layers import Attention
from octavo.worker.model_runner import ModelRunner


class TorchWorker(Worker):
    """The backend's hooks supply the attention, the fused layer ops, the step's sampler,
    static-shape graphs and, for one rank of a tensor-parallel engine (`rank`), the
    communicator: the worker then holds that rank's shard of the model, its heads' KV cache,
    and only rank 0 samples. Subclasses say how much memory the KV cache may take when the
    user did not (`kv_memory_budget`), or size it themselves (`num_kv_blocks`)."""

    supports_pooling = True

    def __init__(self, config: EngineConfig, backend: Backend, device: torch.device,
                 attention: AttentionBackend, rank: ParallelRank | None = None):
        self.config = config
        self.backend = backend
        self.device = device
        self.attention = attention
        self.rank = rank
        self.comm: Communicator = SingleRank()
        self.model = None
        self.model_config: ModelConfig | None = None
        self.runner: ModelRunner | None = None

    def load_model(self) -> ModelConfig:
        if self.rank is not None and self.rank.world_size > 1:
            self.comm = self.backend.communicator(self.rank, self.device)
        self.model, self.model_config = load_model(self.config, self.device, self.backend.layer_ops(), self.comm,
                                                   self.backend.quantized_types)
        return self.model_config

    def kv_cache_dtype(self) -> torch.dtype:
        return self.model_config.dtype

    def kv_bytes_per_block(self, block_size: int) -> int:
        """K and V of one block over this worker's attention layers (its heads only)."""
        elem = torch.empty((), dtype=self.kv_cache_dtype()).element_size()
        return sum(2 * block_size * m.spec.num_kv_heads * m.spec.head_dim * elem
                   for m in self.model.modules() if isinstance(m, Attention))

    def kv_memory_budget(self) -> int:
        """Bytes the KV cache may take when `kv_cache_memory` is not set."""
        raise NotImplementedError(f"{type(self).__name__} has no KV memory budget: set kv_cache_memory")

    def num_kv_blocks(self, block_size: int) -> int:
        """Blocks in `kv_cache_memory`, else in the budget, but no more than every sequence at
        full length could use."""
        budget = self.kv_memory_budget() if self.config.kv_cache_memory is None else 0
        return num_blocks_for_memory(self.config, self.model_config.max_model_len, block_size,
                                     self.kv_bytes_per_block(block_size), budget)

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        for module in self.model.modules():
            if isinstance(module, Attention):
                shape = self.attention.kv_cache_shape(num_blocks, block_size, module.spec.num_kv_heads,
                                                      module.spec.head_dim)
                module.kv_cache = self.new_kv_cache(shape)
        args = self.config, self.model_config, self.device
        pooling = self.config.pooler_config.pooling_type if self.config.runner == "pooling" else None
        self.runner = ModelRunner(self.model, self.attention, self.device, self.backend.step_sampler(*args),
                                  self.backend.step_graphs(*args), self.backend.inference_mode, pooling)

    def new_kv_cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        """One layer's cache, zeroed; a backend whose kernels never read a slot before writing
        it may skip the fill (on the CPU, zeroing gigabytes of cache slows every start)."""
        return torch.zeros(shape, dtype=self.kv_cache_dtype(), device=self.device)

    def warm_up(self) -> None:
        self.runner.warm_up(self.config.block_size)

    def execute_model(self, batch: SchedulerOutput) -> None:
        self.runner.execute_model(batch)

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        return self.runner.sample_tokens(grammar)

    def shutdown(self) -> None:
        self.runner = None
        self.model = None
        self.comm.shutdown()
