"""CPU worker: the core's torch worker, with KV memory from `kv_cache_memory`, a thread count
(and, for one worker process of several, its own cores), pre-packed linear weights and a
malloc that keeps freed memory."""
from __future__ import annotations

import torch

from octavo.backend import ConfigError, ModelConfig, TorchWorker
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

    def num_kv_blocks(self, block_size: int) -> int:
        per_block = self.kv_bytes_per_block(block_size)
        memory = self.config.kv_cache_memory
        if memory is None:  # no more than every sequence at full length could use
            full = self.config.max_num_seqs * -(-self.model_config.max_model_len // block_size) * per_block
            memory = min(DEFAULT_KV_CACHE_MEMORY, full)
        blocks = memory // per_block
        if blocks < 1:
            raise ConfigError(f"kv_cache_memory {memory} bytes holds no block of {block_size} tokens "
                              f"({per_block} bytes each)")
        return int(blocks)
