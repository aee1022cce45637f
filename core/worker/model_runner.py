"""Turns a SchedulerOutput into one forward pass and a sample, for torch-module backends."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from octavo.backend import (AttentionBackend, BatchLayout, ModelRunnerOutput, ScheduledRequest,
                            SchedulerOutput, TokenLogprobs)
from octavo.models.layers import ForwardContext
from octavo.sample.metadata import SamplingMetadata
from octavo.sample.ops import SamplerOps
from octavo.sample.sampler import Sampler, gather_logprobs


@dataclass(slots=True)
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    layout: BatchLayout
    logits_indices: torch.Tensor  # [S] last token of each sampling request
    sample_rows: list[int]  # which scheduled requests sample


def prepare_inputs(batch: SchedulerOutput) -> StepInputs:
    """Flatten the batch with numpy: O(requests) Python, O(tokens) vectorised."""
    reqs = batch.requests
    bs = batch.block_size
    num_new = np.fromiter((r.num_new_tokens for r in reqs), np.int64, len(reqs))
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
        input_ids[cu[i]:cu[i + 1]] = r.token_ids[r.num_computed_tokens:r.num_computed_tokens + r.num_new_tokens]
        block_tables[i, :len(r.block_ids)] = r.block_ids
    slot_mapping = block_tables[req_index, positions // bs].astype(np.int64) * bs + positions % bs
    seq_lens = (computed + num_new).astype(np.int32)
    sample_rows = [i for i, r in enumerate(reqs) if r.samples]
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


def _grammar(batch: SchedulerOutput, sample_rows: list[int]) -> tuple[torch.Tensor, list[int]] | None:
    """The step's grammar bitmask with each row's position among the sampling requests.

    Called as soon as the forward pass is launched: on an asynchronous device the masks are
    filled while it runs (a host-to-device copy from pageable memory would wait for it)."""
    if batch.grammar is None:
        return None
    position = {row: i for i, row in enumerate(sample_rows)}
    return batch.grammar.tensor(), [position[row] for row in batch.grammar.rows]


class ModelRunner:
    def __init__(self, model: nn.Module, attn: AttentionBackend, device: torch.device,
                 sampler_ops: SamplerOps):
        self.model = model
        self.attn = attn
        self.device = device
        self.sampler = Sampler(sampler_ops)
        self.generators: dict[str, torch.Generator] = {}

    @torch.inference_mode()
    def execute(self, batch: SchedulerOutput) -> ModelRunnerOutput:
        for rid in batch.finished_request_ids:
            self.generators.pop(rid, None)
        if not batch.requests:
            return ModelRunnerOutput([])
        inputs = prepare_inputs(batch)
        hidden = self.forward(inputs)
        grammar = _grammar(batch, inputs.sample_rows)  # before any copy that waits for the forward
        out = ModelRunnerOutput([-1] * len(batch.requests))
        self._prompt_logprobs(batch, inputs, hidden, out)
        if not inputs.sample_rows:
            return out
        logits = self.model.compute_logits(hidden[inputs.logits_indices.to(self.device)])
        reqs = [batch.requests[i] for i in inputs.sample_rows]
        md = SamplingMetadata.build(reqs, self._generators(reqs), self.device, grammar)
        sampled = self.sampler(logits, md)
        token_ids = sampled.token_ids.tolist()
        for row, token in zip(inputs.sample_rows, token_ids):
            out.sampled_token_ids[row] = token
        if sampled.logprobs is not None:
            self._collect_logprobs(reqs, sampled, out)
        return out

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Hidden states of the step's tokens. Backends override it to replay captured graphs."""
        ctx = ForwardContext(self.attn, self.attn.build_metadata(inputs.layout, self.device))
        return self.model(inputs.input_ids.to(self.device, non_blocking=True),
                          inputs.positions.to(self.device, non_blocking=True), ctx)

    def _generators(self, reqs: list[ScheduledRequest]) -> dict[int, torch.Generator]:
        gens = {}
        for row, r in enumerate(reqs):
            seed = r.sampling_params.seed
            if seed is None or r.sampling_params.greedy:
                continue
            gen = self.generators.get(r.request_id)
            if gen is None:
                gen = self.generators[r.request_id] = torch.Generator(self.device).manual_seed(seed)
            gens[row] = gen
        return gens

    @staticmethod
    def _collect_logprobs(reqs, sampled, out: ModelRunnerOutput) -> None:
        ids, values, ranks = (sampled.logprob_token_ids.tolist(), sampled.logprobs.tolist(),
                              sampled.ranks.tolist())
        for row, r in enumerate(reqs):
            k = r.sampling_params.logprobs
            if k is not None:
                out.logprobs[r.request_id] = TokenLogprobs([ids[row][:k + 1]], [values[row][:k + 1]],
                                                           [ranks[row]])

    def _prompt_logprobs(self, batch: SchedulerOutput, inputs: StepInputs, hidden: torch.Tensor,
                         out: ModelRunnerOutput) -> None:
        """Logprob of each prompt token given the ones before it, chunk by chunk."""
        starts = inputs.layout.query_start_loc
        for i, r in enumerate(batch.requests):
            k = r.sampling_params.prompt_logprobs
            start = r.num_computed_tokens
            count = min(start + r.num_new_tokens, r.num_prompt_tokens - 1) - start
            if k is None or count <= 0:
                continue
            first = int(starts[i])
            logprobs = self.model.compute_logits(hidden[first:first + count]).log_softmax(dim=-1)
            targets = torch.tensor(r.token_ids[start + 1:start + 1 + count], device=logprobs.device)
            ids, values, ranks = gather_logprobs(logprobs, targets, k)
            out.prompt_logprobs[r.request_id] = TokenLogprobs(ids.tolist(), values.tolist(), ranks.tolist())
