"""The sampling half of a step: from the step's hidden states (or logits) to the worker's
answer, with the core's sampler, per-request seeded generators, the grammar masks and
logprobs, packed into a `ModelRunnerOutput`.

`ModelRunner` hands each step to a `StepSampler` (`Backend.step_sampler`): prompt logprobs
(`prompt_logprobs`), then the rows that sample (`sample_hidden`). A backend that samples at
static shapes or in a compiled graph subclasses it, overriding those and `warm_up`. A worker
whose model runs in its own runtime calls `sample` with the logits of the rows that sample.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from octavo.backend import GrammarBitmask, ModelRunnerOutput, StepShape, TokenLogprobs
from octavo.sample.metadata import SamplingMetadata
from octavo.sample.ops import SamplerOps
from octavo.sample.sampler import Sampler, gather_logprobs
from octavo.worker.states import RequestState

LogitsFn = Callable[[torch.Tensor], torch.Tensor | None]
"""The model's logits: hidden states [N, hidden] -> fp32 logits [N, V]; None on a
tensor-parallel rank other than 0, which holds no logits and samples nothing."""

DummyStepFn = Callable[[StepShape], tuple[torch.Tensor, torch.Tensor]]
"""In warm-up: the hidden states and logits indices of a dummy step run at a static shape."""

WarmUpTask = tuple[str, Callable[[], None]]
"""A graph to precompile in warm-up: its label (the progress bar shows it) and what compiles it."""


@dataclass(slots=True)
class PromptChunk:
    """A request's prompt positions in this step whose next prompt token's logprob it asked for."""

    request_id: str
    first: int  # row of the step's hidden states of the first position
    targets: list[int]  # the prompt token after each position
    k: int  # top logprobs per position


class StepSampler:
    def __init__(self, ops: SamplerOps, device: torch.device):
        self.sampler = Sampler(ops)
        self.device = device

    def sample(self, reqs: list[RequestState], rows: list[int], logits: torch.Tensor,
               grammar: GrammarBitmask | None, out: ModelRunnerOutput) -> None:
        """Sample one token for each of `reqs`, the step's requests at `rows` that sample.

        logits [len(rows), V] fp32 on the device (modified in place); `grammar.rows` index
        the step's requests, like `rows`.
        """
        md = SamplingMetadata.build(reqs, self._generators(reqs), self.device, grammar_masks(grammar, rows))
        sampled = self.sampler(logits, md)
        for row, token in zip(rows, sampled.token_ids.tolist()):
            out.sampled_token_ids[row] = token
        if sampled.logprobs is not None:
            record_logprobs(reqs, sampled.logprob_token_ids, sampled.logprobs, sampled.ranks, out)

    def _generators(self, reqs: list[RequestState]) -> dict[int, torch.Generator]:
        """Row -> the request's own generator, for seeded random sampling."""
        gens = {}
        for row, r in enumerate(reqs):
            seed = r.sampling_params.seed
            if seed is None or r.sampling_params.greedy:
                continue
            if r.generator is None:
                r.generator = torch.Generator(self.device).manual_seed(seed)
            gens[row] = r.generator
        return gens

    def sample_hidden(self, reqs: list[RequestState], rows: list[int], hidden: torch.Tensor,
                      logits_indices: torch.Tensor, compute_logits: LogitsFn, grammar: GrammarBitmask | None,
                      out: ModelRunnerOutput) -> None:
        """Sample for `reqs`, the step's requests at `rows` that sample, from the step's hidden
        states.

        hidden [num_tokens, H] on the device: every token of the step, padding included when
        it ran at a static shape. logits_indices (int64, on the host): row i samples from
        hidden[logits_indices[i]]; entries past len(rows) pad a static shape (token 0). The
        core computes the logits of the real rows only.
        """
        logits = compute_logits(hidden[logits_indices[:len(rows)].to(self.device)])
        if logits is not None:  # None: a tensor-parallel rank other than 0 (rank 0 samples)
            self.sample(reqs, rows, logits, grammar, out)

    def prompt_logprobs(self, chunks: list[PromptChunk], hidden: torch.Tensor, compute_logits: LogitsFn,
                        out: ModelRunnerOutput) -> None:
        """Logprob of each prompt token given the ones before it, per request (`hidden` as in
        `sample_hidden`)."""
        for c in chunks:
            logits = compute_logits(hidden[c.first:c.first + len(c.targets)])
            if logits is not None:
                out.prompt_logprobs[c.request_id] = prompt_logprobs(logits, c.targets, c.k)

    def warm_up(self, shapes: list[StepShape], step_for: DummyStepFn, compute_logits: LogitsFn) -> list[WarmUpTask]:
        """What to precompile, run in order after the forward pass of every static shape
        (`StepGraphs.shapes`); step_for(shape) gives a dummy step's hidden states and logits
        indices as `sample_hidden` would get them. The core's sampler runs eagerly: nothing."""
        return []


def grammar_masks(grammar: GrammarBitmask | None, rows: list[int]) -> tuple[torch.Tensor, list[int]] | None:
    """The grammar's bitmask with, per bitmask row, its index among `rows` (the rows that
    sample) rather than among the step's requests."""
    if grammar is None:
        return None
    position = {row: i for i, row in enumerate(rows)}
    return grammar.bitmask, [position[row] for row in grammar.rows]


def record_logprobs(reqs: list[RequestState], ids: torch.Tensor, values: torch.Tensor, ranks: torch.Tensor,
                    out: ModelRunnerOutput) -> None:
    """The sampled tokens' logprobs into `out`, for the requests that asked: row i of ids and
    values [rows, k_max + 1] (the sampled token first, then the top-k) and ranks [rows] is
    reqs[i]'s; rows past len(reqs) are ignored."""
    ids, values, ranks = ids.tolist(), values.tolist(), ranks.tolist()
    for i, r in enumerate(reqs):
        k = r.sampling_params.logprobs
        if k is not None:
            out.logprobs[r.request_id] = TokenLogprobs([ids[i][:k + 1]], [values[i][:k + 1]], [ranks[i]])


def prompt_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> TokenLogprobs:
    """Logprobs of `targets` (each prompt token after the first) and the top-k at each
    position, from the logits [len(targets), V] of the positions before them."""
    logprobs = logits.log_softmax(dim=-1)
    ids, values, ranks = gather_logprobs(logprobs, torch.tensor(targets, device=logprobs.device), k)
    return TokenLogprobs(ids.tolist(), values.tolist(), ranks.tolist())
