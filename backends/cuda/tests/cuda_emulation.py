"""The CUDA backend with its device substituted, for tests on machines without a GPU.

The substitutions: the worker runs on `DEVICE` (the CPU unless OCTAVO_TRITON_DEVICE says
otherwise) with a fixed KV block count instead of profiling GPU memory, availability is not
checked, and steps run eagerly (CUDA graphs need a CUDA device); the Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by
the repository's conftest.py or the caller). Everything else is octavo-cuda's own code: the
attention backend, the fused layer ops, the options.

    python -m pytest --pyargs octavo.testing.conformance \\
        --octavo-backend backends/cuda/tests/cuda_emulation.py:InterpretedCudaBackend
"""
from __future__ import annotations

import os

import torch

from octavo.backend import Availability, TorchWorker
from octavo_cuda import CudaBackend

DEVICE = torch.device(os.environ.get("OCTAVO_TRITON_DEVICE", "cpu"))


class FixedBlocksWorker(TorchWorker):
    def num_kv_blocks(self, block_size: int) -> int:
        return self.config.num_kv_blocks or 64


class InterpretedCudaBackend(CudaBackend):
    """CudaBackend with its attention and layer ops, on whatever device the kernels run here."""

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True)

    def create_worker(self, config):
        return FixedBlocksWorker(config, self, DEVICE, self.attention_backend())

    def step_graphs(self, config, model_config, device):
        return None
