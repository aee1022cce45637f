"""The static-shape plan of an XLA engine: which graphs exist, and how to count compiles.

Four kinds of graph, each compiled once per bucket in warm-up:

- the forward pass (with the KV writes), one per token bucket (`XlaGraphs`); block tables
  are always `max_num_reqs` x `block_table_width`, so the number of requests does not
  change the graph;
- the gather of the rows that sample, at the step's `max_num_reqs` padded logits indices,
  one per token bucket (`XlaSampler`);
- the logits of those rows and the sampler, one per request bucket and sampler variant
  (`sampler.VARIANTS`);
- prompt logprobs over a whole step, one per token bucket.

XLA compiles a graph when it first meets its shape; torch-xla's lazy tensors trace each
step anew and find the compiled graph by hash, so a step of a known shape compiles nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_xla

from octavo.backend import ForwardFn, StepGraphs, StepShape
from octavo_tpu.sampler import VARIANTS


@dataclass(slots=True)
class XlaPlan:
    token_buckets: list[int]
    req_buckets: list[int]
    max_num_reqs: int  # rows of every block table (the largest request bucket)
    block_table_width: int
    num_logprobs: int  # top logprobs every sampler graph computes (the engine's max_logprobs)
    vocab_size: int

    @property
    def num_graphs(self) -> int:
        return 3 * len(self.token_buckets) + len(VARIANTS) * len(self.req_buckets)


class XlaGraphs(StepGraphs):
    """`StepGraphs` for lazy tensors: `capture` remembers the forward pass; `run` traces it
    and launches it without waiting (`torch_xla.sync(wait=False)`: the host goes on to fill
    the grammar masks), which compiles the graph the first time its shape is seen (warm-up
    runs each shape once) and replays it after that."""

    def __init__(self, plan: XlaPlan):
        self.plan = plan
        self.block_table_width = plan.block_table_width
        self.pad_slot = -1  # set by the worker once the cache (and its padding page) exists
        self._forward: ForwardFn | None = None

    def shapes(self) -> list[StepShape]:
        return [StepShape(t, self.plan.max_num_reqs) for t in self.plan.token_buckets]

    def capture(self, shape: StepShape, forward: ForwardFn, input_ids: torch.Tensor, positions: torch.Tensor,
                metadata) -> None:
        self._forward = forward

    def run(self, shape: StepShape, input_ids: torch.Tensor, positions: torch.Tensor, metadata) -> torch.Tensor:
        """Hidden states of every padded token (slicing the padding off would put the step's
        length into the graphs that follow)."""
        hidden = self._forward(input_ids, positions, metadata)
        torch_xla.sync(wait=False)
        return hidden


def num_compiles() -> int:
    """Graphs XLA has compiled in this process (torch-xla's `UncachedCompile` counter)."""
    import torch_xla.debug.metrics as met

    return met.counter_value("UncachedCompile") or 0


def num_graphs_run() -> int:
    """Graph executions that needed a compiled graph: compiled, or found compiled in this
    process (`CachedCompile`, e.g. another engine's of the same shapes)."""
    import torch_xla.debug.metrics as met

    return num_compiles() + (met.counter_value("CachedCompile") or 0)
