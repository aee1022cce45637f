"""Octavo backend for NVIDIA GPUs: torch for the model, Triton kernels for attention and KV.

Importing this package is cheap (no triton, no CUDA init); kernels load on first use.
Kernels, one concept per module: `kv_cache` (reshape_and_cache), `paged_attention` (unified
prefill+decode attention), `rms_norm`, `rotary`; `attention.TritonAttention` implements the
contract's AttentionBackend with them, `layer_ops.TritonLayerOps` its LayerOps (fused norms,
residual adds and rotary for the core's models); `worker.CudaWorker` sizes the KV cache by
profiling and captures CUDA graphs.
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from octavo.backend import (Availability, Backend, BackendOptions, ConfigError, EngineConfig, ModelConfig,
                            ParallelRank, option)

if TYPE_CHECKING:
    from octavo.backend import LayerOps, StepGraphs
    from octavo_cuda.launch import LaunchConfig
    from octavo_cuda.runtime import GpuRuntime

__version__ = "0.1.0"

logger = logging.getLogger(__name__)

DEFAULT_CUDA_GRAPH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


def _torch_build() -> str:
    if torch.version.hip:
        return f"torch {torch.__version__}, ROCm/HIP {torch.version.hip} build"
    if torch.version.cuda:
        return f"torch {torch.__version__}, CUDA {torch.version.cuda} build"
    return f"torch {torch.__version__} build"


def triton_missing_reason(install_hint: str = "pip install triton==3.7.1") -> str | None:
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed ({install_hint})"
    return None


@dataclass
class GpuOptions(BackendOptions):
    """The GPU backends' options, with vLLM's names (shared by every GPU backend that means
    the same by them)."""

    gpu_memory_utilization: float = option(0.9, "fraction of GPU memory for weights, activations and KV cache")
    cuda_graph_sizes: list[int] | None = option(
        None, "decode batch sizes to capture as graphs (None: powers of two and steps of 32 up to max_num_seqs)")
    enforce_eager: bool = option(False, "never capture graphs")

    def validate(self, config: EngineConfig) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.enforce_eager or config.tensor_parallel_size > 1:
            # Graphs around NCCL collectives have not run on a GPU machine yet: tensor-parallel
            # ranks run eagerly until they have.
            self.cuda_graph_sizes = []
        elif self.cuda_graph_sizes is None:
            self.cuda_graph_sizes = [s for s in DEFAULT_CUDA_GRAPH_SIZES if s <= config.max_num_seqs]
        else:
            if any(s <= 0 for s in self.cuda_graph_sizes):
                raise ConfigError(f"--cuda-graph-sizes must be positive, got {self.cuda_graph_sizes}")
            self.cuda_graph_sizes = sorted(set(self.cuda_graph_sizes))


class CudaBackend(Backend):
    name = "cuda"
    contract_version = "4.1"
    priority = 100
    options_class = GpuOptions
    supported_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    kv_cache_dtypes = ("auto",)
    default_block_size = 16
    supported_block_sizes = (16, 32)
    device_type = "cuda"  # the torch device the worker runs on
    distributed_backend = "nccl"  # RCCL on ROCm builds of torch, under the same name
    ray_resource = "GPU"

    @classmethod
    def availability(cls) -> Availability:
        if torch.version.hip:
            return Availability(False, f"no CUDA device: this torch is a ROCm build ({_torch_build()}); "
                                       "use --device rocm (pip install -e backends/rocm)")
        if not torch.version.cuda:
            return Availability(False, "no CUDA device: torch.cuda.is_available() is False "
                                       f"({_torch_build()} without CUDA; install a CUDA build of torch)")
        if not torch.cuda.is_available():
            return Availability(False, f"no CUDA device: torch.cuda.is_available() is False ({_torch_build()}; "
                                       "check the NVIDIA driver and CUDA_VISIBLE_DEVICES)")
        missing = triton_missing_reason()
        if missing:
            return Availability(False, missing)
        return Availability(True)

    def launch_config(self) -> LaunchConfig:
        from octavo_cuda.launch import CUDA_LAUNCH

        return CUDA_LAUNCH

    def runtime(self) -> GpuRuntime:
        """torch's API for this GPU (memory, synchronisation, graphs); ROCm builds speak torch.cuda too."""
        from octavo_cuda.runtime import CUDA_RUNTIME

        return CUDA_RUNTIME

    def default_dtype(self) -> torch.dtype:
        # bf16 needs sm_80+; older GPUs get fp16.
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.float16
        return torch.bfloat16

    def attention_backend(self):
        from octavo_cuda.attention import TritonAttention

        return TritonAttention(self.launch_config())

    def layer_ops(self) -> LayerOps:
        from octavo_cuda.layer_ops import TritonLayerOps

        return TritonLayerOps(self.launch_config())

    def step_graphs(self, config: EngineConfig, model_config: ModelConfig,
                    device: torch.device) -> StepGraphs | None:
        """CUDA graphs of decode steps at `cuda_graph_sizes` (none with --enforce-eager)."""
        if not self.options.cuda_graph_sizes:
            return None
        if not self.runtime().has_graphs:
            logger.info("%s: this torch (%s) cannot capture graphs; every step runs eagerly", self.name,
                        torch.__version__)
            return None
        from octavo_cuda.cuda_graphs import CudaGraphs

        return CudaGraphs(self.options.cuda_graph_sizes, model_config.max_model_len, config.block_size, device,
                          self.runtime())

    def create_worker(self, config: EngineConfig, rank: ParallelRank | None = None):
        """One GPU per worker process: the local rank's among those this process sees (all of
        the machine's under multiprocessing; under Ray, the one Ray assigned it)."""
        from octavo_cuda.worker import CudaWorker

        return CudaWorker(config, self, torch.device(self.device_type), self.attention_backend(), self.runtime())
        index = rank.local_rank % torch.cuda.device_count() if rank is not None else 0
        return CudaWorker(config, self, torch.device("cuda", index), self.attention_backend(), rank)


__all__ = ["CudaBackend", "GpuOptions", "__version__"]
