"""Octavo's CPU backend: torch with oneDNN matmuls and C++ kernels (attention over the paged
cache and fused layer ops on AVX-512; GGUF quantized linears on AVX2 and up); bf16 where the
CPU has native bf16, fp32 elsewhere."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Literal

import torch

from octavo.backend import (Availability, Backend, BackendOptions, ConfigError, EngineConfig, LayerOps,
                            ParallelRank, Worker, option)

__all__ = ["CpuBackend", "CpuOptions"]


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 matmuls run natively (and faster than fp32)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@dataclass
class CpuOptions(BackendOptions):
    num_threads: int | None = option(None, "threads for compute (torch's intra-op threads; None: all cores, "
                                           "or each worker's share of them)")
    cpu_omp_threads_bind: str = option(
        "auto", "cores of each worker process of a tensor/data-parallel engine, as vLLM's "
                "VLLM_CPU_OMP_THREADS_BIND: auto (equal, disjoint shares), all (no binding) or lists "
                "per local rank like 0-3|4-7")
    quantization: Literal["none", "int8", "int4"] = option(
        "none", "weight-only quantization of a dense checkpoint's linears at load, onto the quantized kernels: "
                "int8 (GGUF's Q8_0) or int4 (Q4_1: 32 weights per scale and minimum); GGUF files keep their types")

    def validate(self, config: EngineConfig) -> None:
        from octavo_cpu.affinity import check_bind

        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"--num-threads must be at least 1, got {self.num_threads}")
        check_bind(self.cpu_omp_threads_bind)


class CpuBackend(Backend):
    name = "cpu"
    contract_version = "4.2"
    priority = 0
    options_class = CpuOptions
    supported_dtypes = (torch.float32, torch.bfloat16, torch.float16)
    default_block_size = 16
    distributed_backend = "gloo"

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if cpu_has_bf16() else torch.float32

    @property
    def quantized_types(self) -> frozenset[str]:
        """The GGUF types the quantized kernels read, where this CPU runs them;
        OCTAVO_CPU_QUANTIZED=0 dequantizes every GGUF at load instead (the HF reference's math)."""
        from octavo_cpu.kernels import quantized
        from octavo_cpu.quant import QUANTIZED_TYPES

        if os.environ.get("OCTAVO_CPU_QUANTIZED", "1") == "0" or quantized() is None:
            return frozenset()
        return QUANTIZED_TYPES

    def check_and_update_config(self, config: EngineConfig) -> None:
        super().check_and_update_config(config)
        if self.options.quantization != "none" and not self.quantized_types:
            raise ConfigError("--quantization needs the CPU backend's quantized kernels (x86-64 with AVX2, built by "
                              "pip), and OCTAVO_CPU_QUANTIZED not 0")

    def layer_ops(self) -> LayerOps:
        from octavo_cpu.kernels import avx512

        if avx512() is None:
            return LayerOps()
        from octavo_cpu.layer_ops import CpuLayerOps

        return CpuLayerOps(avx512())

    def create_worker(self, config: EngineConfig, rank: ParallelRank | None = None) -> Worker:
        from octavo_cpu.attention import TorchPagedAttention
        from octavo_cpu.kernels import avx512
        from octavo_cpu.worker import CpuWorker

        return CpuWorker(config, self, torch.device("cpu"), TorchPagedAttention(avx512()), rank)
