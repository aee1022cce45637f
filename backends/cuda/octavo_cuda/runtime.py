"""The GPU runtime calls the worker and the graphs make, for each kind of GPU torch drives.

torch.cuda serves NVIDIA GPUs and ROCm builds alike; torch.xpu (Intel GPUs, octavo-xpu)
names the same memory and synchronisation functions. Only the graph classes differ in name,
so a `GpuRuntime` holds the module and its graph class, and captures through both.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class GpuRuntime:
    api: Any  # torch.cuda / torch.xpu: mem_get_info, memory_reserved, max_memory_allocated,
    #           reset_peak_memory_stats, synchronize, empty_cache, set_device
    graph_class: Callable[[], Any] | None  # torch.cuda.CUDAGraph / torch.xpu.XPUGraph; None: no graphs
    graph_context: Callable[..., Any] | None  # torch.cuda.graph / torch.xpu.graph

    @property
    def has_graphs(self) -> bool:
        return self.graph_class is not None

    def capture(self, fn: Callable[[], torch.Tensor], pool: Any) -> tuple[Any, torch.Tensor]:
        """Record `fn` into a new graph sharing memory `pool`; returns (graph, its output).
        `graph.replay()` reruns it into the same output; `graph.pool()` is its pool."""
        graph = self.graph_class()
        with self.graph_context(graph, pool=pool):
            out = fn()
        return graph, out


CUDA_RUNTIME = GpuRuntime(torch.cuda, torch.cuda.CUDAGraph, torch.cuda.graph)
