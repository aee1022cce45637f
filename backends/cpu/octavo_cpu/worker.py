"""CPU worker: the core's torch worker, with KV memory from `kv_cache_memory`, a thread count
(and, for one worker process of several, its own cores), GGUF-quantized linears kept in
their blocks, pre-packed dense linear weights, decoder layers fused for decode steps and a
malloc that keeps freed memory."""
from __future__ import annotations

import torch

from octavo.backend import ModelConfig, TorchWorker
from octavo_cpu.affinity import bind_worker
from octavo_cpu.allocator import keep_freed_memory
from octavo_cpu.fused import fuse_decoder_layers
from octavo_cpu.kernels import avx512, bf16_panels, quantized
from octavo_cpu.linear import pack_linears
from octavo_cpu.quant import quantize_dense_linears, quantize_linears

DEFAULT_KV_CACHE_MEMORY = 4 << 30  # bytes, as vLLM's VLLM_CPU_KVCACHE_SPACE default


class CpuWorker(TorchWorker):
    def load_model(self) -> ModelConfig:
        options = self.backend.options
        cores = bind_worker(options.cpu_omp_threads_bind, self.rank)
        if options.num_threads or cores:
            torch.set_num_threads(options.num_threads or cores)
        keep_freed_memory()
        model_config = super().load_model()
        if self.backend.options.quantization != "none":
            quantize_dense_linears(self.model, self.backend.options.quantization)
        if self.backend.quantized_types:
            quantize_linears(self.model, quantized())
        pack_linears(self.model, self.config.max_num_seqs, bf16_panels())
        fuse_decoder_layers(self.model, avx512())
        return model_config

    def kv_memory_budget(self) -> int:
        return DEFAULT_KV_CACHE_MEMORY

    def new_kv_cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Not zeroed: the pages fault in as blocks are first written, instead of all at start
        (4 GiB by default); attention never reads a slot before its sequence wrote it, and
        masks a reused block's stale slots (test_cpu_attention.py: the stale-NaN case)."""
        return torch.empty(shape, dtype=self.kv_cache_dtype(), device=self.device)
