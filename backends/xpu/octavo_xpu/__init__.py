"""Octavo backend for Intel GPUs, on torch's own `torch.xpu` and Triton.

Everything but the runtime is octavo-cuda's: the Triton kernels (paged attention, KV write,
RMSNorm, rotary) compile for Intel GPUs through Intel's Triton backend, which torch's XPU
wheels bring; the worker sizes the KV cache by profiling with `torch.xpu.mem_get_info`; the
decode steps are captured as XPU graphs (`torch.xpu.XPUGraph`) where this torch has them,
else run eagerly; `--gpu-memory-utilization`, `--cuda-graph-sizes` and `--enforce-eager`
mean what they mean on CUDA (the options class is octavo-cuda's `GpuOptions`).
intel-extension-for-pytorch is not used: it stops at torch 2.8 and is discontinued.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from octavo.backend import Availability
from octavo_cuda import CudaBackend, triton_missing_reason
from octavo_cuda.launch import LaunchConfig

if TYPE_CHECKING:
    from octavo_cuda.runtime import GpuRuntime

__version__ = "0.1.0"

# Intel's Triton backend runs a "warp" as one sub-group of `threads_per_warp` = 32 work-items
# by default (Xe-HPC and Xe2 support 16 and 32), in work-groups of up to 1024: the same
# thread counts as NVIDIA, so the kernels keep their warps per program.
XPU_LAUNCH = LaunchConfig(warp_size=32, max_threads=1024)


class XpuBackend(CudaBackend):
    name = "xpu"
    priority = 100
    device_type = "xpu"
    # Tensor parallelism is not offered on XPU yet: torch's XCCL process group has not met an
    # Intel GPU here (octavo-cuda's NCCL does not apply).
    distributed_backend = None

    @classmethod
    def availability(cls) -> Availability:
        if not hasattr(torch, "xpu") or not torch.xpu.is_available():
            return Availability(False, f"no XPU device: torch.xpu.is_available() is False (torch {torch.__version__}; "
                                       "install torch from PyTorch's XPU wheel index and Intel's GPU driver, and "
                                       "check ZE_AFFINITY_MASK)")
        missing = triton_missing_reason("torch's XPU wheels bring it as pytorch-triton-xpu")
        if missing:
            return Availability(False, missing)
        return Availability(True)

    def launch_config(self) -> LaunchConfig:
        return XPU_LAUNCH

    def runtime(self) -> GpuRuntime:
        """torch.xpu; XPU graphs where this torch has them (torch.xpu.XPUGraph), else eager."""
        from octavo_cuda.runtime import GpuRuntime

        return GpuRuntime(torch.xpu, getattr(torch.xpu, "XPUGraph", None), getattr(torch.xpu, "graph", None))

    def default_dtype(self) -> torch.dtype:
        if torch.xpu.is_available() and not torch.xpu.is_bf16_supported():
            return torch.float16
        return torch.bfloat16


__all__ = ["XpuBackend", "XPU_LAUNCH", "__version__"]
