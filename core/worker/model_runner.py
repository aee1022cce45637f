"""Turns a SchedulerOutput into one forward pass and a sample, for torch-module backends.

`execute_model` applies the step to the worker's requests, builds the step's flat inputs
and launches the forward pass (eagerly, or padded to a captured shape when the backend has
`StepGraphs`); `sample_tokens` then hands the step's hidden states to the backend's
`StepSampler` (prompt logprobs, then the rows that sample) or, under the pooling runner,
pools their hidden states. `warm_up` captures every static
shape, then runs what the sampler precompiles, under one progress bar.
In a tensor-parallel engine every rank runs both phases (the logits are gathered) and only
rank 0, which gets the logits, samples.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from octavo.backend import (AttentionBackend, BatchLayout, GrammarBitmask, ModelRunnerOutput, SchedulerOutput,
                            StepGraphs, StepShape)
from octavo.models.layers import ForwardContext
from octavo.sample.step_sampler import PromptChunk, StepSampler
from octavo.worker.pooler import pool
from octavo.worker.states import RequestState, RequestStates


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    layout: BatchLayout
    logits_indices: torch.Tensor  # [S] last token of each sampling request (padded: shape.num_reqs)
    sample_rows: list[int]  # which scheduled requests sample


def prepare_inputs(batch: SchedulerOutput, reqs: list[RequestState]) -> StepInputs:
    """Flatten the step (`reqs`: `RequestStates.update(batch)`) with numpy: O(requests)
    Python, O(tokens) vectorised."""
    bs = batch.block_size
    num_new = np.fromiter((r.num_new_tokens for r in batch.requests), np.int64, len(reqs))
    computed = np.fromiter((r.num_computed_tokens for r in reqs), np.int64, len(reqs))
    cu = np.zeros(len(reqs) + 1, np.int64)
    np.cumsum(num_new, out=cu[1:])
    num_tokens = int(cu[-1])
    req_index = np.repeat(np.arange(len(reqs)), num_new)
    positions = np.arange(num_tokens) - cu[:-1][req_index] + computed[req_index]
    input_ids = np.empty(num_tokens, np.int64)
    max_blocks = max(len(r.block_ids) for r in reqs)
    block_tables = np.zeros((len(reqs), max_blocks), np.int32)
    for i, r in enumerate(reqs):
        input_ids[cu[i]:cu[i + 1]] = r.token_ids[r.num_computed_tokens:r.num_computed_tokens + int(num_new[i])]
        block_tables[i, :len(r.block_ids)] = r.block_ids
    slot_mapping = block_tables[req_index, positions // bs].astype(np.int64) * bs + positions % bs
    seq_lens = (computed + num_new).astype(np.int32)
    sample_rows = [i for i, r in enumerate(batch.requests) if r.samples]
    layout = BatchLayout(
        query_start_loc=torch.from_numpy(cu.astype(np.int32)),
        seq_lens=torch.from_numpy(seq_lens),
        block_tables=torch.from_numpy(block_tables),
        slot_mapping=torch.from_numpy(slot_mapping),
        max_query_len=int(num_new.max()),
        max_seq_len=int(seq_lens.max()),
        block_size=bs,
    )
    return StepInputs(torch.from_numpy(input_ids), torch.from_numpy(positions), layout,
                      torch.from_numpy(cu[1:][sample_rows] - 1), sample_rows)


def pad_inputs(inputs: StepInputs, shape: StepShape, pad_slot: int, block_table_width: int | None) -> StepInputs:
    """The step padded to `shape`: padding requests have no tokens and no context, padding
    tokens (id 0, position 0) belong to no request and write to `pad_slot`; block tables are
    widened to `block_table_width` columns; `logits_indices` has `shape.num_reqs` entries
    (padding ones point at token 0), so gathering the rows that sample is static too. The
    real requests' rows are unchanged."""
    layout = inputs.layout
    extra_tokens, extra_reqs = shape.num_tokens - layout.num_tokens, shape.num_reqs - layout.num_reqs
    if extra_tokens < 0 or extra_reqs < 0:
        raise ValueError(f"a step of {layout.num_tokens} tokens and {layout.num_reqs} requests "
                         f"does not fit {shape}")
    width = max(block_table_width or 0, layout.block_tables.shape[1])
    tables = torch.zeros(shape.num_reqs, width, dtype=torch.int32)
    tables[:layout.num_reqs, :layout.block_tables.shape[1]] = layout.block_tables
    padded = replace(
        layout,
        query_start_loc=torch.cat([layout.query_start_loc, layout.query_start_loc[-1:].expand(extra_reqs)]),
        seq_lens=torch.cat([layout.seq_lens, torch.zeros(extra_reqs, dtype=torch.int32)]),
        block_tables=tables,
        slot_mapping=torch.cat([layout.slot_mapping, torch.full((extra_tokens,), pad_slot, dtype=torch.int64)]))
    zeros = torch.zeros(extra_tokens, dtype=torch.int64)
    indices = torch.zeros(shape.num_reqs, dtype=torch.int64)
    indices[:len(inputs.logits_indices)] = inputs.logits_indices
    return replace(inputs, input_ids=torch.cat([inputs.input_ids, zeros]),
                   positions=torch.cat([inputs.positions, zeros]), layout=padded, logits_indices=indices)


def dummy_inputs(shape: StepShape, block_size: int, pad_slot: int, block_table_width: int | None) -> StepInputs:
    """A step of `shape` for capture and warm-up: requests of one token each at position 0
    (the rest of the tokens unowned), every write going to `pad_slot`."""
    num_reqs = min(shape.num_reqs, shape.num_tokens)
    layout = BatchLayout(
        query_start_loc=torch.arange(num_reqs + 1, dtype=torch.int32),
        seq_lens=torch.ones(num_reqs, dtype=torch.int32),
        block_tables=torch.zeros(num_reqs, 1, dtype=torch.int32),
        slot_mapping=torch.full((num_reqs,), pad_slot, dtype=torch.int64),
        max_query_len=1, max_seq_len=1, block_size=block_size)
    zeros = torch.zeros(num_reqs, dtype=torch.int64)
    inputs = StepInputs(zeros, zeros, layout, torch.arange(num_reqs), list(range(num_reqs)))
    return pad_inputs(inputs, shape, pad_slot, block_table_width)


@dataclass(slots=True)
class _Step:
    """What `sample_tokens` needs of the step `execute_model` launched."""

    batch: SchedulerOutput
    reqs: list[RequestState]
    inputs: StepInputs  # padded when the step ran at a static shape
    hidden: torch.Tensor  # [inputs' tokens, hidden]


class ModelRunner:
    def __init__(self, model: nn.Module, attn: AttentionBackend, device: torch.device,
                 sampler: StepSampler, graphs: StepGraphs | None = None, inference_mode: bool = True,
                 pooling_type: str | None = None):
        """`inference_mode` False: steps run under torch.no_grad (`Backend.inference_mode`).
        `pooling_type`: the pooling runner's (LAST or MEAN); None samples tokens."""
        self.model = model
        self.attn = attn
        self.device = device
        self.graphs = graphs
        self.pooling_type = pooling_type
        self.states = RequestStates()
        self.sampler = sampler
        self._autograd_off = torch.inference_mode if inference_mode else torch.no_grad
        self.warm_up_times: list[tuple[str, float]] = []  # (graph, seconds) of each warm-up task
        self._step: _Step | None = None

    def execute_model(self, batch: SchedulerOutput) -> None:
        reqs = self.states.update(batch)
        self._step = None
        if batch.requests:
            inputs = prepare_inputs(batch, reqs)
            shape = self.graphs.shape_for(inputs.layout) if self.graphs is not None else None
            if shape is not None:
                inputs = pad_inputs(inputs, shape, self.graphs.pad_slot, self.graphs.block_table_width)
            with self._autograd_off():
                self._step = _Step(batch, reqs, inputs, self.forward(inputs, shape))

    def sample_tokens(self, grammar: GrammarBitmask | None) -> ModelRunnerOutput:
        step, self._step = self._step, None
        if step is None:
            return ModelRunnerOutput([])
        out = ModelRunnerOutput([-1] * len(step.reqs))
        compute_logits = self.model.compute_logits
        with self._autograd_off():
            chunks = prompt_chunks(step.batch, step.reqs, step.inputs.layout)
            if chunks:
                self.sampler.prompt_logprobs(chunks, step.hidden, compute_logits, out)
            rows = step.inputs.sample_rows
            if rows and self.pooling_type is not None:
                pooled = pool(step.hidden, step.inputs.layout.query_start_loc, rows, self.pooling_type).cpu()
                # One tensor each (not views of the batch's): each pickles alone.
                out.pooler_output = {step.reqs[i].request_id: row.clone() for i, row in zip(rows, pooled)}
            elif rows:
                self.sampler.sample_hidden([step.reqs[i] for i in rows], rows, step.hidden, step.inputs.logits_indices,
                                           compute_logits, grammar, out)
        return out

    # ------------------------------------------------------------------ forward

    def forward(self, inputs: StepInputs, shape: StepShape | None = None) -> torch.Tensor:
        """Hidden states of every token of `inputs`: replayed from the captured `shape` (the
        inputs padded to it), else eagerly."""
        if shape is None:
            return self._forward(*self._to_device(inputs))
        return self.graphs.run(shape, *self._to_device(inputs))

    def warm_up(self, block_size: int) -> None:
        """Capture or compile every shape the backend runs statically, each then run once on
        its dummy step (what the sampler's warm-up gets), then the sampler's warm-up tasks,
        under one progress bar (compiling can take minutes)."""
        shapes = self.graphs.shapes() if self.graphs is not None else []
        steps: dict[StepShape, tuple[torch.Tensor, torch.Tensor]] = {}
        tasks = [(f"forward, {s.num_tokens} tokens x {s.num_reqs} requests",
                  partial(self._capture, s, block_size, steps)) for s in shapes]
        tasks += self.sampler.warm_up(shapes, steps.__getitem__, self.model.compute_logits)
        if not tasks:
            return
        with self._autograd_off(), tqdm(total=len(tasks), desc="warm-up", unit="graph") as bar:
            for label, task in tasks:
                bar.set_postfix_str(label)
                start = time.perf_counter()
                task()
                self.warm_up_times.append((label, time.perf_counter() - start))
                bar.update()

    def _capture(self, shape: StepShape, block_size: int,
                 steps: dict[StepShape, tuple[torch.Tensor, torch.Tensor]]) -> None:
        inputs = dummy_inputs(shape, block_size, self.graphs.pad_slot, self.graphs.block_table_width)
        self.graphs.capture(shape, self._forward, *self._to_device(inputs))
        steps[shape] = self.forward(inputs, shape), inputs.logits_indices

    def _to_device(self, inputs: StepInputs):
        return (inputs.input_ids.to(self.device, non_blocking=True),
                inputs.positions.to(self.device, non_blocking=True),
                self.attn.build_metadata(inputs.layout, self.device))

    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata) -> torch.Tensor:
        return self.model(input_ids, positions, ForwardContext(self.attn, metadata))


def prompt_chunks(batch: SchedulerOutput, reqs: list[RequestState], layout: BatchLayout) -> list[PromptChunk]:
    """The step's prompt positions whose next token's logprob a request asked for."""
    chunks = []
    for i, (scheduled, r) in enumerate(zip(batch.requests, reqs)):
        k = r.sampling_params.prompt_logprobs
        start = r.num_computed_tokens
        count = min(start + scheduled.num_new_tokens, r.num_prompt_tokens - 1) - start
        if k is not None and count > 0:
            chunks.append(PromptChunk(r.request_id, int(layout.query_start_loc[i]),
                                      r.token_ids[start + 1:start + 1 + count], k))
    return chunks
