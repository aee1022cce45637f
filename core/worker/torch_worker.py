"""The worker for backends that run the core's torch modules on a torch device."""
from __future__ import annotations

import torch

from octavo.backend import (AttentionBackend, Backend, EngineConfig, GrammarBitmask, ModelConfig,
                            ModelRunnerOutput, SchedulerOutput, Worker)
from octavo.loader import load_model
from octavo.models.layers import Attention
from octavo.worker.model_runner import ModelRunner


class TorchWorker(Worker):
    """Subclasses decide how many KV blocks fit (`num_kv_blocks`); the backend's hooks supply
    the attention, the fused layer ops, the sampler ops and static-shape graphs."""

    supports_pooling = True

    def __init__(self, config: EngineConfig, backend: Backend, device: torch.device,
                 attention: AttentionBackend):
        self.config = config
        self.backend = backend
        self.device = device
        self.attention = attention
        self.model = None
        self.model_config: ModelConfig | None = None
        self.runner: ModelRunner | None = None

    def load_model(self) -> ModelConfig:
        self.model, self.model_config = load_model(self.config, self.device, self.backend.layer_ops())
        return self.model_config

    def kv_cache_dtype(self) -> torch.dtype:
        return self.model_config.dtype

    def kv_bytes_per_block(self, block_size: int) -> int:
        return self.model_config.kv_bytes_per_block(block_size, self.kv_cache_dtype())

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        for module in self.model.modules():
            if isinstance(module, Attention):
                shape = self.attention.kv_cache_shape(num_blocks, block_size, module.spec.num_kv_heads,
                                                      module.spec.head_dim)
                module.kv_cache = torch.zeros(shape, dtype=self.kv_cache_dtype(), device=self.device)
        graphs = self.backend.step_graphs(self.config, self.model_config, self.device)
        pooling = self.config.pooler_config.pooling_type if self.config.runner == "pooling" else None
        self.runner = ModelRunner(self.model, self.attention, self.device, self.backend.sampler_ops(), graphs, pooling)

    def warm_up(self) -> None:
        self.runner.capture_graphs(self.config.block_size)

    def execute_model(self, batch: SchedulerOutput) -> None:
        self.runner.execute_model(batch)

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        return self.runner.sample_tokens(grammar)

    def shutdown(self) -> None:
        self.runner = None
        self.model = None
