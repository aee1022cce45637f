"""From a step's logits to the worker's answer: the core's sampler, per-request seeded
generators, the grammar masks and logprobs, packed into a `ModelRunnerOutput`.

Any worker can use it: the torch model runner does, and so can a backend whose model runs
in its own runtime, once it has the logits of the positions that sample.
"""
from __future__ import annotations

import torch

from octavo.backend import GrammarBitmask, ModelRunnerOutput, TokenLogprobs
from octavo.sample.metadata import SamplingMetadata
from octavo.sample.ops import SamplerOps
from octavo.sample.sampler import Sampler, gather_logprobs
from octavo.worker.states import RequestState


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
        masks = None
        if grammar is not None:
            position = {row: i for i, row in enumerate(rows)}
            masks = grammar.bitmask, [position[row] for row in grammar.rows]
        md = SamplingMetadata.build(reqs, self._generators(reqs), self.device, masks)
        sampled = self.sampler(logits, md)
        for row, token in zip(rows, sampled.token_ids.tolist()):
            out.sampled_token_ids[row] = token
        if sampled.logprobs is not None:
            ids, values, ranks = (sampled.logprob_token_ids.tolist(), sampled.logprobs.tolist(),
                                  sampled.ranks.tolist())
            for i, r in enumerate(reqs):
                k = r.sampling_params.logprobs
                if k is not None:
                    out.logprobs[r.request_id] = TokenLogprobs([ids[i][:k + 1]], [values[i][:k + 1]], [ranks[i]])

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


def prompt_logprobs(logits: torch.Tensor, targets: list[int], k: int) -> TokenLogprobs:
    """Logprobs of `targets` (each prompt token after the first) and the top-k at each
    position, from the logits [len(targets), V] of the positions before them."""
    logprobs = logits.log_softmax(dim=-1)
    ids, values, ranks = gather_logprobs(logprobs, torch.tensor(targets, device=logprobs.device), k)
    return TokenLogprobs(ids.tolist(), values.tolist(), ranks.tolist())
