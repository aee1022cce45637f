"""Octavo backend for AMD GPUs (ROCm builds of torch).

The kernels, attention backend and worker are octavo-cuda's: Triton compiles the same source
for AMDGCN, and a ROCm torch exposes HIP devices through the `torch.cuda` API. What differs is
the launch: AMD wavefronts are 64 wide, so `ROCM_LAUNCH` asks for half the warps for the same
thread count.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from octavo.backend import Availability
from octavo_cuda import CudaBackend, triton_missing_reason

if TYPE_CHECKING:
    from octavo_cuda.launch import LaunchConfig

__version__ = "0.1.0"


class RocmBackend(CudaBackend):
    name = "rocm"
    priority = 100

    @classmethod
    def availability(cls) -> Availability:
        if not torch.version.hip:
            what = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
            return Availability(False, f"no ROCm device: torch {torch.__version__} is a {what} build, not a "
                                       "ROCm (HIP) build; install torch from the ROCm wheel index")
        if not torch.cuda.is_available():
            return Availability(False, f"no ROCm device: torch.cuda.is_available() is False (torch "
                                       f"{torch.__version__}, HIP {torch.version.hip}; check /dev/kfd access and "
                                       "HIP_VISIBLE_DEVICES)")
        missing = triton_missing_reason("ROCm torch wheels bring it as pytorch-triton-rocm")
        if missing:
            return Availability(False, missing)
        return Availability(True)

    def launch_config(self) -> LaunchConfig:
        from octavo_cuda.launch import ROCM_LAUNCH

        return ROCM_LAUNCH


__all__ = ["RocmBackend", "__version__"]
