"""The worker for backends that run the core's torch modules on a torch device."""
from __future__ import annotations

import torch

from octavo.backend import (AttentionBackend, Backend, Communicator, EngineConfig, GrammarBitmask, ModelConfig,
                            ModelRunnerOutput, ParallelRank, SchedulerOutput, Worker)
from octavo.distributed import SingleRank
from octavo.loader import load_model
from octavo.models.layers import Attention
from octavo.worker.model_runner import ModelRunner


class TorchWorker(Worker):
    """Subclasses decide how many KV blocks fit (`num_kv_blocks`); the backend's hooks supply
    the attention, the fused layer ops, the sampler ops, static-shape graphs and, for one rank
    of a tensor-parallel engine (`rank`), the communicator: the worker then holds that rank's
    shard of the model, its heads' KV cache, and only rank 0 samples."""

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
        self.model, self.model_config = load_model(self.config, self.device, self.backend.layer_ops(), self.comm)
        return self.model_config

    def kv_cache_dtype(self) -> torch.dtype:
        return self.model_config.dtype

    def kv_bytes_per_block(self, block_size: int) -> int:
        """K and V of one block over this worker's attention layers (its heads only)."""
        elem = torch.empty((), dtype=self.kv_cache_dtype()).element_size()
        return sum(2 * block_size * m.spec.num_kv_heads * m.spec.head_dim * elem
                   for m in self.model.modules() if isinstance(m, Attention))

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        for module in self.model.modules():
            if isinstance(module, Attention):
                shape = self.attention.kv_cache_shape(num_blocks, block_size, module.spec.num_kv_heads,
                                                      module.spec.head_dim)
                module.kv_cache = torch.zeros(shape, dtype=self.kv_cache_dtype(), device=self.device)
        graphs = self.backend.step_graphs(self.config, self.model_config, self.device)
        self.runner = ModelRunner(self.model, self.attention, self.device, self.backend.sampler_ops(), graphs)

    def warm_up(self) -> None:
        self.runner.capture_graphs(self.config.block_size)

    def execute_model(self, batch: SchedulerOutput) -> None:
        self.runner.execute_model(batch)

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        return self.runner.sample_tokens(grammar)

    def shutdown(self) -> None:
        self.runner = None
        self.model = None
        self.comm.shutdown()
