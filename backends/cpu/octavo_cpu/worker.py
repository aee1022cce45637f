"""CPU worker: the core's torch worker, with KV memory from `kv_cache_memory`, a thread count,
GGUF-quantized linears kept in their blocks, pre-packed dense linear weights and a malloc
that keeps freed memory."""
from __future__ import annotations

import torch

from octavo.backend import ModelConfig, TorchWorker, num_blocks_for_memory
from octavo_cpu.allocator import keep_freed_memory
from octavo_cpu.kernels import quantized
from octavo_cpu.linear import pack_linears
from octavo_cpu.quant import quantize_dense_linears, quantize_linears

DEFAULT_KV_CACHE_MEMORY = 4 << 30  # bytes, as vLLM's VLLM_CPU_KVCACHE_SPACE default


class CpuWorker(TorchWorker):
    def load_model(self) -> ModelConfig:
        if self.backend.options.num_threads:
            torch.set_num_threads(self.backend.options.num_threads)
        keep_freed_memory()
        model_config = super().load_model()
        if self.backend.options.quantization != "none":
            quantize_dense_linears(self.model, self.backend.options.quantization)
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
        return num_blocks_for_memory(self.config, self.model_config.max_model_len, block_size,
                                     self.kv_bytes_per_block(block_size), DEFAULT_KV_CACHE_MEMORY)
