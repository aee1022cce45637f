"""CPU worker: the core's torch worker, with KV memory from `kv_cache_memory`, a thread count
(and, for one worker process of several, its own cores), pre-packed linear weights and a
malloc that keeps freed memory."""
from __future__ import annotations

import torch

from octavo.backend import ModelConfig, TorchWorker
from octavo_cpu.affinity import bind_worker
from octavo_cpu.allocator import keep_freed_memory
from octavo_cpu.linear import pack_linears

DEFAULT_KV_CACHE_MEMORY = 4 << 30  # bytes, as vLLM's VLLM_CPU_KVCACHE_SPACE default


class CpuWorker(TorchWorker):
    def load_model(self) -> ModelConfig:
        options = self.backend.options
        cores = bind_worker(options.cpu_omp_threads_bind, self.rank)
        if options.num_threads or cores:
            torch.set_num_threads(options.num_threads or cores)
        keep_freed_memory()
        model_config = super().load_model()
        pack_linears(self.model, self.config.max_num_seqs)
        return model_config

    def kv_memory_budget(self) -> int:
        return DEFAULT_KV_CACHE_MEMORY
