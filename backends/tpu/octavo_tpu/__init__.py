"""Octavo backend for Google TPUs on torch-xla: static shapes, bounded compiles, ragged
paged attention.

XLA compiles one graph per input shape, so every step is padded to a bucket (`buckets`;
`graphs`: the contract's `step_graphs` hook) and sampled on the device at bucketed row
counts (`sampler`; `step_sampler`: the `step_sampler` hook); warm-up compiles every graph
the configuration allows and serving compiles none. Attention is torch-xla's ragged paged
attention (the Pallas kernel on a TPU; `attention` has the static-shape reference that
XLA's CPU client runs).

`PJRT_DEVICE=CPU` runs the backend on XLA's CPU client: a testing mode that compiles and
runs the same graphs a TPU would (everything but the Pallas kernel), in fp32 by default,
selected by name only (`--device tpu`; `--device auto` keeps the cpu backend).

torch-xla 2.9 requires torch 2.9 exactly, so this package lives in its own environment.
Importing it is cheap: torch-xla loads when a worker is created.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from octavo.backend import (Availability, Backend, BackendOptions, ConfigError, EngineConfig, ModelConfig,
                            option)

if TYPE_CHECKING:
    from octavo_tpu.graphs import XlaGraphs, XlaPlan
    from octavo_tpu.step_sampler import XlaSampler

__version__ = "0.1.0"

TORCH_XLA_VERSION = "2.9"
CPU_CLIENT = "XLA's CPU client (PJRT_DEVICE=CPU): a testing mode, not a TPU"


@dataclass
class TpuOptions(BackendOptions):
    min_num_tokens: int = option(16, "smallest token bucket: steps are padded to powers of two from here, "
                                     "the last bucket being --max-num-batched-tokens")
    min_num_reqs: int = option(8, "smallest request bucket: sampling runs at powers of two from here up to "
                                  "--max-num-seqs")
    xla_cache_dir: str | None = option(None, "XLA's persistent compilation cache (as vLLM's VLLM_XLA_CACHE_PATH); "
                                             "one per process, set before anything compiles")
    hbm_memory_utilization: float = option(0.9, "fraction of TPU memory for weights, activations and KV cache")

    def validate(self, config: EngineConfig) -> None:
        for name in ("min_num_tokens", "min_num_reqs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.hbm_memory_utilization <= 1.0:
            raise ConfigError(f"--hbm-memory-utilization must be in (0, 1], got {self.hbm_memory_utilization}")


def on_cpu_client() -> bool:
    return os.environ.get("PJRT_DEVICE") == "CPU"


class TpuBackend(Backend):
    name = "tpu"
    contract_version = "4.1"
    priority = 90
    options_class = TpuOptions
    supported_dtypes = (torch.bfloat16, torch.float32)
    default_block_size = 16
    supported_block_sizes = (16, 32, 64, 128)
    inference_mode = False  # lazy tensors cannot be inference tensors

    @classmethod
    def availability(cls) -> Availability:
        if importlib.util.find_spec("torch_xla") is None:
            return Availability(False, f"torch-xla is not installed (torch-xla {TORCH_XLA_VERSION} needs torch "
                                       f"{TORCH_XLA_VERSION} exactly: install backends/tpu in its own environment)")
        if not torch.__version__.startswith(TORCH_XLA_VERSION + "."):
            return Availability(False, f"torch-xla {TORCH_XLA_VERSION} needs torch {TORCH_XLA_VERSION}, "
                                       f"this is torch {torch.__version__}")
        device = os.environ.get("PJRT_DEVICE")
        if device == "CPU":  # by name only: `--device auto` keeps the cpu backend
            return Availability(True, CPU_CLIENT, auto=False)
        if device not in (None, "TPU"):
            return Availability(False, f"PJRT_DEVICE={device}: this backend runs on TPUs "
                                       "(or on XLA's CPU client for testing: PJRT_DEVICE=CPU)")
        if not _tpu_chips():
            return Availability(False, "no TPU found (PJRT_DEVICE=CPU runs this backend on XLA's CPU client, "
                                       "a testing mode)")
        if importlib.util.find_spec("libtpu") is None:
            return Availability(False, "libtpu is not installed (pip install 'torch-xla[tpu]')")
        return Availability(True)

    def default_dtype(self) -> torch.dtype:
        return torch.float32 if on_cpu_client() else torch.bfloat16

    def create_worker(self, config: EngineConfig):
        from octavo_tpu.attention import XlaAttention
        from octavo_tpu.worker import XlaWorker

        _use_cache_dir(self.options.xla_cache_dir)
        import torch_xla

        return XlaWorker(config, self, torch_xla.device(), XlaAttention(config.block_size, not on_cpu_client()))

    def step_graphs(self, config: EngineConfig, model_config: ModelConfig, device: torch.device) -> XlaGraphs:
        from octavo_tpu.graphs import XlaGraphs

        return XlaGraphs(self.plan(config, model_config))

    def step_sampler(self, config: EngineConfig, model_config: ModelConfig, device: torch.device) -> XlaSampler:
        from octavo_tpu.step_sampler import XlaSampler

        return XlaSampler(self.plan(config, model_config), device)

    def plan(self, config: EngineConfig, model_config: ModelConfig) -> XlaPlan:
        """The buckets every graph is compiled at: the graphs' and the sampler's."""
        from octavo_tpu.buckets import bucket_sizes
        from octavo_tpu.graphs import XlaPlan

        return XlaPlan(token_buckets=bucket_sizes(self.options.min_num_tokens, config.max_num_batched_tokens),
                       req_buckets=bucket_sizes(self.options.min_num_reqs, config.max_num_seqs),
                       max_num_reqs=config.max_num_seqs,
                       block_table_width=-(-model_config.max_model_len // config.block_size),
                       num_logprobs=min(config.max_logprobs, model_config.vocab_size),
                       vocab_size=model_config.vocab_size)


def _tpu_chips() -> int:
    """TPU chips on the PCI bus. Importing torch-xla sets PJRT_DEVICE=CPU when none is set and
    it finds no TPU: undone, or the next check in this process would find the testing mode
    usable where this one found no TPU."""
    unset = "PJRT_DEVICE" not in os.environ
    from torch_xla._internal.tpu import num_available_chips

    if unset and os.environ.get("PJRT_DEVICE") == "CPU":
        del os.environ["PJRT_DEVICE"]
    return num_available_chips()


_cache_dir: str | None = None  # the process's persistent compilation cache, once set


def _use_cache_dir(path: str | None) -> None:
    """XLA reads its cache directory once, before the process's first compilation."""
    global _cache_dir
    if path is None or path == _cache_dir:
        return
    import torch_xla
    import torch_xla.runtime as xr

    if _cache_dir is not None or torch_xla._XLAC._xla_computation_cache_is_initialized():
        raise ConfigError(f"--xla-cache-dir {path}: this process's XLA compilation cache is already set up "
                          f"({_cache_dir or 'in memory only'}); choose the directory before anything compiles")
    os.makedirs(path, exist_ok=True)
    xr.initialize_cache(path, readonly=False)
    _cache_dir = path
