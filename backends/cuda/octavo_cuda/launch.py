"""Kernel launch plans: one place that decides grid, arguments, constexprs and warps.

Every kernel wrapper builds a `Launch` and runs it. The same plan drives ahead-of-time
compilation (`octavo_cuda.aot`): built from `meta` tensors, it yields the exact signature
and constexprs a real launch would use, so CI can prove each kernel builds for sm_80/sm_90
and gfx90a/gfx942 on a machine without a GPU.

`LaunchConfig` carries what differs between vendors: the warp (wavefront) size. AMD GPUs run
64-wide wavefronts, so the same thread count needs half the warps there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


@dataclass(frozen=True, slots=True)
class LaunchConfig:
    """Vendor launch parameters; kernels are shared, only these differ."""

    warp_size: int = 32
    attention_threads: int = 128  # one 16 x block_size tile per program: 128 threads suffice
    max_threads: int = 1024
    num_stages: int | None = None  # None: Triton's default for the target

    def warps_for_threads(self, threads: int) -> int:
        threads = max(self.warp_size, min(threads, self.max_threads))
        return max(1, threads // self.warp_size)

    def warps_for_elements(self, elements: int, per_thread: int = 8) -> int:
        """Warps for an elementwise/reduction tile of `elements` values."""
        return self.warps_for_threads(next_power_of_2(max(1, elements // per_thread)))

    @property
    def attention_warps(self) -> int:
        return self.warps_for_threads(self.attention_threads)


CUDA_LAUNCH = LaunchConfig(warp_size=32)
ROCM_LAUNCH = LaunchConfig(warp_size=64)

_TRITON_DTYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.int8: "i8",
    torch.uint8: "u8",
}


def _arg_type(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


@dataclass(slots=True)
class Launch:
    """A fully decided kernel launch; `run()` launches it, `signature()` compiles it AOT."""

    kernel: Any  # triton JITFunction (or InterpretedFunction under TRITON_INTERPRET=1)
    grid: tuple[int, ...]
    args: dict[str, Any]  # runtime arguments, in any order, by name
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int | None = None

    def run(self) -> None:
        if min(self.grid) <= 0:
            return
        kwargs: dict[str, Any] = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            kwargs["num_stages"] = self.num_stages
        self.kernel[self.grid](**self.args, **self.constexprs, **kwargs)

    def signature(self) -> dict[str, str]:
        """Triton 3.7 `ASTSource` signature: every parameter by name, constexprs included."""
        sig = {}
        for name in self.kernel.arg_names:
            if name in self.constexprs:
                sig[name] = "constexpr"
            else:
                sig[name] = _arg_type(self.args[name])
        return sig

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_warps": self.num_warps}
        if self.num_stages is not None:
            opts["num_stages"] = self.num_stages
        return opts
