"""The CPU standing in for an Intel GPU: the one place where octavo-xpu's device is substituted.

`XpuOnCpuBackend` is `XpuBackend` with two things replaced, nothing else:

* the torch device is the CPU, so octavo-cuda's Triton kernels run under Triton's
  interpreter (TRITON_INTERPRET=1, set by the root conftest.py);
* the runtime is `CPU_AS_XPU` instead of torch.xpu: memory queries answer for a virtual
  64 MiB device that nothing else uses (so the worker's profiling arithmetic runs, on made-up
  numbers), and a graph "capture" runs the step once and "replays" by running it again into
  the same output tensor, so the decode-graph path (sizes, padding, static buffers) runs as
  on the device.

Two defaults are smaller, for the interpreter's sake (each interpreted forward pass takes
seconds here): steps of at most 128 tokens when the caller sets no budget (the worker's
profile step runs the largest step the scheduler may send), and graphs of decode batches
1, 2 and 4 unless the caller names sizes (larger batches run eagerly).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from octavo.backend import Availability, EngineConfig
from octavo_cuda import GpuOptions
from octavo_cuda.runtime import GpuRuntime
from octavo_xpu import XpuBackend

VIRTUAL_DEVICE_BYTES = 64 << 20


class CpuMemoryApi:
    """torch.xpu's memory and device calls, answered for an idle virtual device."""

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return VIRTUAL_DEVICE_BYTES, VIRTUAL_DEVICE_BYTES

    def memory_reserved(self, device=None) -> int:
        return 0

    def max_memory_allocated(self, device=None) -> int:
        return 0

    def reset_peak_memory_stats(self, device=None) -> None: ...

    def synchronize(self, device=None) -> None: ...

    def empty_cache(self) -> None: ...

    def set_device(self, device) -> None: ...


class ReplayGraph:
    """A captured step that replays by running again into the captured output."""

    def __init__(self, fn: Callable[[], torch.Tensor], out: torch.Tensor):
        self.fn, self.out, self.replays = fn, out, 0

    def replay(self) -> None:
        self.out.copy_(self.fn())
        self.replays += 1

    def pool(self) -> None:
        return None


class CpuRuntime(GpuRuntime):
    def capture(self, fn, pool):
        out = fn()
        return ReplayGraph(fn, out), out


CPU_AS_XPU = CpuRuntime(CpuMemoryApi(), ReplayGraph, None)


class XpuOnCpuBackend(XpuBackend):
    device_type = "cpu"

    def __init__(self, options: GpuOptions | None = None):
        super().__init__(options if options is not None else GpuOptions(cuda_graph_sizes=[1, 2, 4]))

    @classmethod
    def availability(cls) -> Availability:
        return Availability(True, "XPU backend with the CPU substituted for the device (tests)")

    def runtime(self) -> GpuRuntime:
        return CPU_AS_XPU

    def check_and_update_config(self, config: EngineConfig) -> None:
        super().check_and_update_config(config)
        if config.max_num_batched_tokens is None:
            config.max_num_batched_tokens = 128
