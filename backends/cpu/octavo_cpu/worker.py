"""CPU worker: the core's torch worker, with KV memory from `kv_cache_memory`, a thread count,
GGUF-quantized linears kept in their blocks, pre-packed dense linear weights and a malloc
that keeps freed memory."""
from __future__ import annotations

import torch

from octavo.config import ConfigError, ModelConfig
from octavo.worker import TorchWorker
from octavo_cpu.allocator import keep_freed_memory
from octavo_cpu.kernels import quantized
from octavo_cpu.linear import pack_linears
from octavo_cpu.quant import quantize_dense_linears, quantize_linears

DEFAULT_KV_CACHE_MEMORY = 4 << 30  # bytes, as vLLM's VLLM_CPU_KVCACHE_SPACE default


class CpuWorker(TorchWorker):
    def load_model(self) -> ModelConfig:
        if self.config.num_threads:
            torch.set_num_threads(self.config.num_threads)
        keep_freed_memory()
        model_config = super().load_model()
        scheme = self.config.extra.get("quantization")
        if scheme is not None:
            quantize_dense_linears(self.model, scheme)
        if self.backend.quantized_types:
            quantize_linears(self.model, quantized())
        pack_linears(self.model, self.config.max_num_seqs)
        return model_config

    def new_kv_cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Not zeroed: the pages fault in as blocks are first written, instead of all at start
        (4 GiB by default); attention never reads a slot before its sequence wrote it, and
        masks a reused block's stale slots (test_cpu_attention.py: the stale-NaN case)."""
        return torch.empty(shape, dtype=self.kv_cache_dtype(), device=self.device)

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
