"""CUDA graphs for decode steps: capture the model's forward once per batch size, replay it.

A decode step of n requests (one new token each) is padded up to the smallest captured size
>= n. Inputs go into static buffers; the attention metadata into static `TritonMetadata`
views (`copy_` pads requests with empty ones and tokens with slot -1, which the kernels skip).
Steps with prefill tokens, or more requests than the largest size, run eagerly.
"""
from __future__ import annotations

from bisect import bisect_left

import torch

from octavo.models.layers import ForwardContext
from octavo.worker.model_runner import ModelRunner, StepInputs
from octavo_cuda.attention import TritonMetadata


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


class CudaGraphRunner(ModelRunner):
    """ModelRunner whose decode forwards replay captured graphs (after `capture`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sizes: list[int] = []  # captured batch sizes, ascending; empty: all eager

    @torch.inference_mode()
    def capture(self, sizes: list[int], max_model_len: int, block_size: int) -> None:
        """Capture largest first, so smaller graphs reuse the largest one's memory pool."""
        sizes = sorted(sizes)
        max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(sizes[-1], dtype=torch.long, device=self.device)
        self.positions = torch.zeros(sizes[-1], dtype=torch.long, device=self.device)
        self.static = static_metadata(sizes[-1], max_blocks, max_model_len, block_size, self.device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.views: dict[int, TritonMetadata] = {}
        pool = None
        for size in reversed(sizes):
            view = metadata_view(self.static, size)
            ctx = ForwardContext(self.attn, view)
            ids, positions = self.input_ids[:size], self.positions[:size]
            self.model(ids, positions, ctx)  # compiles this size's kernels outside the capture
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self.model(ids, positions, ctx)
            pool = graph.pool()
            self.graphs[size], self.views[size] = graph, view
        self.sizes = sizes

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        layout = inputs.layout
        n = layout.num_reqs
        if layout.max_query_len != 1 or not self.sizes or n > self.sizes[-1] \
                or layout.block_size != self.static.block_size:
            return super().forward(inputs)
        size = self.sizes[bisect_left(self.sizes, n)]
        self.input_ids[:n].copy_(inputs.input_ids, non_blocking=True)
        self.positions[:n].copy_(inputs.positions, non_blocking=True)
        self.views[size].copy_(self.attn.build_metadata(layout, self.device))
        self.graphs[size].replay()
        return self.outputs[size][:n]
