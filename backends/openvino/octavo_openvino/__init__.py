"""Octavo's OpenVINO backend: the engine's scheduler and KV blocks driving OpenVINO's
paged-attention models on the CPU plugin (bf16 where the CPU has it, f32 on request;
NNCF int8/int4 weight compression; u8 KV cache)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from octavo.backend import Availability, Backend, BackendOptions, ConfigError, EngineConfig, Worker, option

__all__ = ["OpenVINOBackend", "OpenVINOOptions"]


@dataclass
class OpenVINOOptions(BackendOptions):
    quantization: Literal["none", "int8", "int4"] = option(
        "none", "weight-only compression with NNCF at conversion: int8 (asymmetric, per output channel) "
                "or int4 (asymmetric, grouped); none keeps the --dtype weights")
    int4_group_size: int = option(64, "input channels sharing one int4 scale (must divide the hidden sizes)")
    model_cache_dir: str | None = option(
        None, "folder for converted models, keyed by the checkpoint's hash, these options and the "
              "OpenVINO version (default: $OCTAVO_CACHE/openvino, OCTAVO_CACHE defaulting to ~/.cache/octavo)")
    inference_num_threads: int | None = option(None, "OpenVINO CPU threads (None: the plugin's default, all cores)")
    dynamic_quantization_group_size: int = option(
        0, "with int8/int4 weights, quantize activations to int8 in groups of this size (0: off; "
           "faster, but costs accuracy on models with activation outliers such as SmolLM2)")

    def validate(self, config: EngineConfig) -> None:
        if self.int4_group_size <= 0:
            raise ConfigError(f"--int4-group-size must be positive, got {self.int4_group_size}")
        if self.dynamic_quantization_group_size < 0:
            raise ConfigError("--dynamic-quantization-group-size must be 0 (off) or positive")
        if self.inference_num_threads is not None and self.inference_num_threads <= 0:
            raise ConfigError(f"--inference-num-threads must be positive, got {self.inference_num_threads}")


@functools.cache
def cpu_capabilities() -> frozenset[str]:
    """The CPU plugin's optimization capabilities (FP32, BF16, FP16, INT8, ...); empty when
    OpenVINO or its CPU plugin is missing."""
    try:
        import openvino as ov

        return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:
        return frozenset()


class OpenVINOBackend(Backend):
    name = "openvino"
    contract_version = "4.1"
    priority = -10  # `--device auto` keeps the CPU backend unless asked
    options_class = OpenVINOOptions
    supported_dtypes = (torch.bfloat16, torch.float32)
    kv_cache_dtypes = ("auto", "u8")  # auto: the inference precision
    quantizations = ("int8", "int4")
    default_block_size = 32  # the CPU plugin's paged-cache block
    supported_block_sizes = (32,)

    @classmethod
    def availability(cls) -> Availability:
        try:
            import openvino as ov
        except ImportError as exc:
            return Availability(False, f"openvino is not installed ({exc}): pip install 'octavo[openvino]'")
        caps = cpu_capabilities()
        if "FP32" not in caps:
            return Availability(False, f"OpenVINO {ov.get_version()} has no usable CPU plugin")
        offered = [p for p in ("FP32", "BF16", "FP16") if p in caps]
        return Availability(True, f"OpenVINO {ov.get_version()}, CPU plugin: {', '.join(offered)}; "
                                  "weights int8/int4 (NNCF); KV cache u8")

    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if "BF16" in cpu_capabilities() else torch.float32

    def check_and_update_config(self, config: EngineConfig) -> None:
        super().check_and_update_config(config)
        if config.dtype == torch.bfloat16 and "BF16" not in cpu_capabilities():
            raise ConfigError("this CPU has no bf16 support in OpenVINO's CPU plugin: use --dtype float32")

    def create_worker(self, config: EngineConfig) -> Worker:
        from octavo_openvino.worker import OpenVINOWorker

        return OpenVINOWorker(config, self)
