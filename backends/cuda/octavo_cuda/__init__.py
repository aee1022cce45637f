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
from typing import TYPE_CHECKING, Any

import torch

from octavo.backend import Availability, Backend

if TYPE_CHECKING:
    from octavo.config import EngineConfig
    from octavo.models.ops import LayerOps
    from octavo_cuda.launch import LaunchConfig

__version__ = "0.1.0"

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


def normalize_gpu_extras(config: EngineConfig, backend_name: str) -> None:
    """Validate gpu_memory_utilization / cuda_graph_sizes / enforce_eager in config.extra."""
    from octavo.config import ConfigError

    extra = config.extra
    util = extra.get("gpu_memory_utilization", 0.9)
    try:
        util = float(util)
    except (TypeError, ValueError):
        raise ConfigError(f"gpu_memory_utilization must be a number, got {util!r}") from None
    if not 0.0 < util <= 1.0:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {util}")
    extra["gpu_memory_utilization"] = util
    eager = bool(extra.get("enforce_eager", False))
    extra["enforce_eager"] = eager
    sizes: Any = extra.get("cuda_graph_sizes")
    if eager:
        sizes = []
    elif sizes is None:
        sizes = [s for s in DEFAULT_CUDA_GRAPH_SIZES if s <= config.max_num_seqs]
    else:
        if isinstance(sizes, (int, str)):
            sizes = [sizes]
        try:
            sizes = sorted({int(s) for s in sizes})
        except (TypeError, ValueError):
            raise ConfigError(f"cuda_graph_sizes must be a list of integers, got {extra['cuda_graph_sizes']!r}") from None
        if any(s <= 0 for s in sizes):
            raise ConfigError(f"cuda_graph_sizes must be positive, got {sizes}")
    extra["cuda_graph_sizes"] = list(sizes)


class CudaBackend(Backend):
    name = "cuda"
    priority = 100
    supported_dtypes = (torch.bfloat16, torch.float16, torch.float32)
    kv_cache_dtypes = ("auto",)
    default_block_size = 16
    supported_block_sizes = (16, 32)

    @classmethod
    def availability(cls) -> Availability:
        if torch.version.hip:
            return Availability(False, f"no CUDA device: this torch is a ROCm build ({_torch_build()}); "
                                       "use --device rocm (pip install octavo-rocm)")
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

    def default_dtype(self) -> torch.dtype:
        # bf16 needs sm_80+; older GPUs get fp16.
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.float16
        return torch.bfloat16

    def check_and_update_config(self, config: EngineConfig) -> None:
        super().check_and_update_config(config)
        normalize_gpu_extras(config, self.name)

    def attention_backend(self):
        from octavo_cuda.attention import TritonAttention

        return TritonAttention(self.launch_config())

    def layer_ops(self) -> LayerOps:
        from octavo_cuda.layer_ops import TritonLayerOps

        return TritonLayerOps(self.launch_config())

    def create_worker(self, config: EngineConfig):
        from octavo_cuda.worker import CudaWorker

        device = torch.device("cuda", int(config.extra.get("device_index", 0)))
        return CudaWorker(config, self, device, self.attention_backend())


__all__ = ["CudaBackend", "normalize_gpu_extras", "__version__"]
