"""CPU worker: the core's torch worker, with KV memory from `kv_cache_memory`, a thread count,
pre-packed linear weights and a malloc that keeps freed memory."""
from __future__ import annotations

import torch

from octavo.backend import ModelConfig, TorchWorker
from octavo_cpu.allocator import keep_freed_memory
from octavo_cpu.linear import pack_linears

DEFAULT_KV_CACHE_MEMORY = 4 << 30  # bytes, as vLLM's VLLM_CPU_KVCACHE_SPACE default


class CpuWorker(TorchWorker):
    def load_model(self) -> ModelConfig:
        if self.backend.options.num_threads:
            torch.set_num_threads(self.backend.options.num_threads)
        keep_freed_memory()
        model_config = super().load_model()
        pack_linears(self.model, self.config.max_num_seqs)
        return model_config

    def kv_memory_budget(self) -> int:
        return DEFAULT_KV_CACHE_MEMORY
