"""CUDA graphs for decode steps, on the contract's static-shape hook (`StepGraphs`).

A decode step of n requests (one new token each) is padded up to the smallest captured size
>= n. Inputs go into static buffers; the attention metadata into static `TritonMetadata`
views (`copy_` pads requests with empty ones and tokens with slot -1, which the kernels skip).
Steps with prefill tokens, or more requests than the largest size, run eagerly.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any

import torch

from octavo.backend import BatchLayout, ForwardFn, StepGraphs, StepShape
from octavo_cuda.attention import TritonMetadata
from octavo_cuda.runtime import CUDA_RUNTIME, GpuRuntime


def static_metadata(max_seqs: int, max_blocks: int, max_model_len: int, block_size: int,
                    device: torch.device) -> TritonMetadata:
    """Buffers for `max_seqs` one-token requests; before any copy they describe inert padding."""
    return TritonMetadata(
        query_start_loc=torch.arange(max_seqs + 1, dtype=torch.int32, device=device),
        seq_lens=torch.ones(max_seqs, dtype=torch.int32, device=device),
        block_tables=torch.zeros(max_seqs, max_blocks, dtype=torch.int32, device=device),
        slot_mapping=torch.full((max_seqs,), -1, dtype=torch.int64, device=device),
        num_seqs=max_seqs, num_tokens=max_seqs, max_query_len=1, max_seq_len=max_model_len,
        block_size=block_size)


def metadata_view(md: TritonMetadata, size: int) -> TritonMetadata:
    return TritonMetadata(
        query_start_loc=md.query_start_loc[:size + 1], seq_lens=md.seq_lens[:size],
        block_tables=md.block_tables[:size], slot_mapping=md.slot_mapping[:size],
        num_seqs=size, num_tokens=size, max_query_len=1, max_seq_len=md.max_seq_len,
        block_size=md.block_size)


class CudaGraphs(StepGraphs):
    """One graph per decode batch size, captured largest first so that the smaller ones
    reuse its memory pool; every graph reads the same static buffers."""

    def __init__(self, sizes: list[int], max_model_len: int, block_size: int, device: torch.device,
                 runtime: GpuRuntime = CUDA_RUNTIME):
        self.runtime = runtime
        self.sizes = sorted(sizes)
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.device = device
        self.graphs: dict[int, Any] = {}  # CUDAGraph / XPUGraph
        self.outputs: dict[int, torch.Tensor] = {}
        self.static: TritonMetadata | None = None  # allocated by the first capture
        self.pool = None

    def shapes(self) -> list[StepShape]:
        return [StepShape(n, n) for n in reversed(self.sizes)]

    def shape_for(self, layout: BatchLayout) -> StepShape | None:
        n = layout.num_reqs
        if layout.max_query_len != 1 or n > self.sizes[-1] or len(self.graphs) < len(self.sizes):
            return None
        size = self.sizes[bisect_left(self.sizes, n)]
        return StepShape(size, size)

    def capture(self, shape: StepShape, forward: ForwardFn, input_ids: torch.Tensor, positions: torch.Tensor,
                metadata: TritonMetadata) -> None:
        if self.static is None:
            self._allocate()
        size = shape.num_reqs
        args = self._load(size, input_ids, positions, metadata)
        forward(*args)  # compiles this size's kernels outside the capture
        self.runtime.api.synchronize(self.device)
        graph, self.outputs[size] = self.runtime.capture(lambda: forward(*args), self.pool)
        self.pool = graph.pool()
        self.graphs[size] = graph

    def run(self, shape: StepShape, input_ids: torch.Tensor, positions: torch.Tensor,
            metadata: TritonMetadata) -> torch.Tensor:
        self._load(shape.num_reqs, input_ids, positions, metadata)
        self.graphs[shape.num_reqs].replay()
        return self.outputs[shape.num_reqs]

    def _allocate(self) -> None:
        largest = self.sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=self.device)
        self.static = static_metadata(largest, -(-self.max_model_len // self.block_size), self.max_model_len,
                                      self.block_size, self.device)
        self.views = {n: metadata_view(self.static, n) for n in self.sizes}

    def _load(self, size: int, input_ids: torch.Tensor, positions: torch.Tensor, metadata: TritonMetadata):
        """The step's inputs copied into the static buffers of `size`; returns those buffers."""
        self.input_ids[:size].copy_(input_ids, non_blocking=True)
        self.positions[:size].copy_(positions, non_blocking=True)
        self.views[size].copy_(metadata)
        return self.input_ids[:size], self.positions[:size], self.views[size]
