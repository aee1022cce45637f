"""Device-neutral sampling: logit processing, greedy / random choice, logprobs."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.sample.metadata import SamplingMetadata
from octavo.sample.ops import SamplerOps


@dataclass(slots=True)
class SamplerOutput:
    token_ids: torch.Tensor  # [B] long
    # When any row asked for logprobs: [B, 1 + k] ids and logprobs (sampled first), [B] ranks.
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    ranks: torch.Tensor | None = None


class Sampler:
    def __init__(self, ops: SamplerOps):
        self.ops = ops

    def __call__(self, logits: torch.Tensor, md: SamplingMetadata) -> SamplerOutput:
        """logits [B, V] fp32, modified in place. A grammar's mask applies first, so logprobs
        are over the tokens it allows (as vLLM)."""
        if md.grammar is not None:
            self.ops.apply_token_bitmask(logits, *md.grammar)
        raw_logprobs = logits.log_softmax(dim=-1) if md.max_num_logprobs is not None else None
        logits = apply_logit_processors(logits, md)
        sampled = logits.max(dim=-1).indices if md.all_greedy else self._sample(logits, md)
        out = SamplerOutput(sampled)
        if raw_logprobs is not None:
            out.logprob_token_ids, out.logprobs, out.ranks = gather_logprobs(
                raw_logprobs, sampled, md.max_num_logprobs)
        return out

    def _sample(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        greedy = logits.max(dim=-1).indices if md.greedy is not None else None
        logits.div_(md.temperature.unsqueeze(1))
        if md.min_p is not None:
            probs = logits.softmax(dim=-1)
            threshold = probs.amax(dim=-1, keepdim=True) * md.min_p.unsqueeze(1)
            logits.masked_fill_(probs < threshold, float("-inf"))
        if md.top_k is not None or md.top_p is not None:
            logits = self.ops.top_k_top_p(logits, md.top_k, md.top_p)
        sampled = self.ops.random_sample(logits.softmax(dim=-1), md.generators)
        return sampled if greedy is None else torch.where(md.greedy, greedy, sampled)


def apply_logit_processors(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    if md.allowed is not None:
        rows, ids = md.allowed
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep[rows, ids] = True
        restricted = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        restricted[rows] = True
        logits.masked_fill_(~keep & restricted.unsqueeze(1), float("-inf"))
    if md.bias is not None:
        rows, ids, values = md.bias
        logits.index_put_((rows, ids), values, accumulate=True)
    if md.blocked is not None:
        logits[md.blocked] = float("-inf")
    if md.penalties is not None:
        apply_penalties(logits, md)
    return logits


def apply_penalties(logits: torch.Tensor, md: SamplingMetadata) -> None:
    """vLLM's semantics: repetition over prompt and output, presence/frequency over output."""
    presence, frequency, repetition = md.penalties
    num_rows, vocab = logits.shape
    counts = _token_counts(md.output_token_ids, num_rows, vocab, logits.device)
    seen = (counts > 0) | (_token_counts(md.prompt_token_ids, num_rows, vocab, logits.device) > 0)
    rep = repetition.unsqueeze(1).expand_as(logits)
    scaled = torch.where(logits > 0, logits / rep, logits * rep)
    logits.copy_(torch.where(seen, scaled, logits))
    logits.sub_(frequency.unsqueeze(1) * counts)
    logits.sub_(presence.unsqueeze(1) * (counts > 0))


def _token_counts(token_ids: list[list[int]], num_rows: int, vocab: int,
                  device: torch.device) -> torch.Tensor:
    width = max((len(t) for t in token_ids), default=0)
    counts = torch.zeros(num_rows, vocab + 1, device=device)
    if width:
        padded = torch.full((num_rows, width), vocab, dtype=torch.long)
        for i, ids in enumerate(token_ids):
            padded[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        counts.scatter_add_(1, padded.to(device), torch.ones(num_rows, width, device=device))
    return counts[:, :vocab]


def gather_logprobs(logprobs: torch.Tensor, sampled: torch.Tensor, k: int):
    chosen = logprobs.gather(1, sampled.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    if k > 0:
        top_values, top_ids = logprobs.topk(k, dim=-1)
        return (torch.cat([sampled.unsqueeze(1), top_ids], dim=1),
                torch.cat([chosen, top_values], dim=1), ranks)
    return sampled.unsqueeze(1), chosen, ranks
