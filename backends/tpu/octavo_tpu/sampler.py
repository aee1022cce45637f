"""Sampling on the XLA device at a fixed number of rows, in three compiled variants.

The core's sampler sizes its tensors by the step (how many rows sample, which features
they use, token lists of any length), which on XLA is a new graph almost every step. Here
a step's sampling rows are padded to a request bucket, and every per-request setting is a
tensor of that many rows whose padding value changes nothing, so each (bucket, variant) is
one graph:

- `greedy`: argmax (every row greedy, no logit processing);
- `random`: temperature, min-p, top-k, top-p and the random draw (greedy rows included);
- `full`: `random` after the grammar mask, logit bias, allowed-token lists, min-tokens
  blocking and the presence/frequency/repetition penalties, given as dense [rows, vocab]
  tensors built on the host.

The math and its order follow the core's `Sampler`: the grammar mask first, logprobs of
the masked distribution, then the logit processors, greedy argmax, temperature, min-p,
top-k/top-p and the exponential race. Logprobs of the sampled token and the top
`num_logprobs` are always computed (one graph whether or not a row asks), and read back
only when a row asks.

Random draws: the device cannot hold a torch.Generator per request, so each row's
uniforms are a counter-based hash of (seed, number of tokens sampled so far, token id):
a seeded request samples the same tokens whatever else runs with it and after a
preemption; unseeded rows get a fresh seed from the host's generator each step.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from octavo.backend import RequestState, SamplingParams

GREEDY, RANDOM, FULL = "greedy", "random", "full"
VARIANTS = (GREEDY, RANDOM, FULL)
_M32 = 0xFFFFFFFF
_BITS = [1 << j for j in range(31)] + [-(1 << 31)]  # each bit of an int32 word


@dataclass(slots=True)
class SamplingTensors:
    """A step's sampling settings, one row per (padded) sampling row; padding rows are greedy."""

    temperature: torch.Tensor  # [R] f32, 0 = greedy
    top_k: torch.Tensor  # [R] int64, vocab size = off
    top_p: torch.Tensor  # [R] f32, 1 = off
    min_p: torch.Tensor  # [R] f32, 0 = off
    seeds: torch.Tensor  # [R] int64
    counters: torch.Tensor  # [R] int64, tokens the request has sampled so far
    # `full` only (None otherwise):
    bitmask: torch.Tensor | None = None  # [R, ceil(V / 32)] int32 grammar masks, -1 = unguided
    bias: torch.Tensor | None = None  # [R, V] f32: logit_bias, -inf outside allowed ids and on blocked stops
    penalties: torch.Tensor | None = None  # [R, 3] f32: presence, frequency, repetition
    output_counts: torch.Tensor | None = None  # [R, V] f32
    seen: torch.Tensor | None = None  # [R, V] bool, in the prompt or the output

    def to(self, device: torch.device) -> SamplingTensors:
        return SamplingTensors(**{f.name: None if (t := getattr(self, f.name)) is None else t.to(device)
                                  for f in fields(self)})


@dataclass(slots=True)
class SampledTensors:
    token_ids: torch.Tensor  # [R] int64
    logprob_token_ids: torch.Tensor  # [R, 1 + K]: the sampled token, then the top K
    logprobs: torch.Tensor  # [R, 1 + K]
    ranks: torch.Tensor  # [R]


# ----------------------------------------------------------------------------- host side


def build_sampling(reqs: list[RequestState], num_rows: int, vocab_size: int,
                   grammar: tuple[torch.Tensor, list[int]] | None = None) -> tuple[str, SamplingTensors]:
    """The variant and CPU tensors for `reqs` (the rows that sample, in order), padded to
    `num_rows`. `grammar`: the step's bitmask and the row of `reqs` each of its rows constrains."""
    params = [r.sampling_params for r in reqs]
    pad = num_rows - len(reqs)
    seeds = torch.randint(0, 1 << 62, (num_rows,))  # unseeded rows: the host generator
    for i, p in enumerate(params):
        if p.seed is not None:
            seeds[i] = p.seed
    tensors = SamplingTensors(
        temperature=_column([0.0 if p.greedy else p.temperature for p in params], pad, 0.0, torch.float32),
        top_k=_column([p.top_k or vocab_size for p in params], pad, vocab_size, torch.int64),
        top_p=_column([p.top_p for p in params], pad, 1.0, torch.float32),
        min_p=_column([p.min_p for p in params], pad, 0.0, torch.float32),
        seeds=seeds,
        counters=_column([len(r.token_ids) - r.num_prompt_tokens for r in reqs], pad, 0, torch.int64))
    blocked = [_stop_ids(r) for r in reqs]
    if grammar is not None or any(_processes(p) for p in params) or any(blocked):
        _add_processing(tensors, reqs, blocked, num_rows, vocab_size, grammar)
        return FULL, tensors
    return (GREEDY if all(p.greedy for p in params) else RANDOM), tensors


def _column(values: list, pad: int, fill, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values + [fill] * pad, dtype=dtype)


def _processes(p: SamplingParams) -> bool:
    return bool(p.logit_bias or p.allowed_token_ids or p.presence_penalty or p.frequency_penalty
                or p.repetition_penalty != 1.0)


def _stop_ids(r: RequestState) -> list[int]:
    """Stop tokens blocked until `min_tokens` are out (the core's rule)."""
    p = r.sampling_params
    if len(r.token_ids) - r.num_prompt_tokens >= p.min_tokens:
        return []
    ids = list(p.stop_token_ids)
    if r.eos_token_id is not None and not p.ignore_eos:
        ids.append(r.eos_token_id)
    return ids


def _add_processing(t: SamplingTensors, reqs: list[RequestState], blocked: list[list[int]], num_rows: int,
                    vocab: int, grammar: tuple[torch.Tensor, list[int]] | None) -> None:
    words = -(-vocab // 32)
    bitmask = np.full((num_rows, words), -1, np.int32)
    if grammar is not None:
        masks, rows = grammar
        width = min(words, masks.shape[1])
        bitmask[rows] = 0  # ids past the grammar's mask are not allowed
        bitmask[rows, :width] = masks[:, :width].numpy()
    bias = np.zeros((num_rows, vocab), np.float32)
    counts = np.zeros((num_rows, vocab), np.float32)
    seen = np.zeros((num_rows, vocab), bool)
    penalties = np.tile(np.array([0.0, 0.0, 1.0], np.float32), (num_rows, 1))
    for i, (r, stops) in enumerate(zip(reqs, blocked)):
        p = r.sampling_params
        if p.allowed_token_ids:
            bias[i] = -np.inf
            bias[i, p.allowed_token_ids] = 0.0
        for token, value in (p.logit_bias or {}).items():
            bias[i, token] += value
        bias[i, stops] = -np.inf
        penalties[i] = (p.presence_penalty, p.frequency_penalty, p.repetition_penalty)
        output = np.asarray(r.output_token_ids, np.int64)
        np.add.at(counts[i], output, 1.0)
        seen[i, r.token_ids[:r.num_prompt_tokens]] = True
        seen[i, output] = True
    t.bitmask, t.bias, t.penalties = torch.from_numpy(bitmask), torch.from_numpy(bias), torch.from_numpy(penalties)
    t.output_counts, t.seen = torch.from_numpy(counts), torch.from_numpy(seen)


def dummy_sampling(variant: str, num_rows: int, vocab_size: int) -> SamplingTensors:
    """Tensors of `variant`'s graph, every row padding, for warm-up."""
    _, t = build_sampling([], num_rows, vocab_size)
    if variant == FULL:
        _add_processing(t, [], [], num_rows, vocab_size, None)
    return t


# ----------------------------------------------------------------------------- device side


def sample(logits: torch.Tensor, t: SamplingTensors, variant: str, num_logprobs: int) -> SampledTensors:
    """logits [R, V] f32 on the device -> sampled ids and logprobs; one graph per (R, variant)."""
    if variant == FULL:
        logits = apply_bitmask(logits, t.bitmask)
    raw_logprobs = logits.log_softmax(dim=-1)
    if variant == FULL:
        logits = apply_processing(logits, t)
    greedy = logits.argmax(dim=-1)
    token_ids = greedy if variant == GREEDY else torch.where(t.temperature == 0, greedy, _random(logits, t))
    return SampledTensors(token_ids, *gather_logprobs(raw_logprobs, token_ids, num_logprobs))


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """Bit j of word k clear: token 32 * k + j is -inf. Bits are tested with an AND (XLA
    shifts negative words as if dividing them)."""
    bits = torch.tensor(_BITS, dtype=torch.int32).to(logits.device)
    allowed = (bitmask.unsqueeze(-1) & bits).flatten(1)[:, :logits.shape[1]]
    return logits.masked_fill(allowed == 0, float("-inf"))


def apply_processing(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """Allowed ids, bias and min-tokens blocking (one additive tensor), then vLLM's
    penalties: repetition over prompt and output, presence and frequency over the output."""
    logits = logits + t.bias
    presence, frequency, repetition = t.penalties.unbind(dim=1)
    rep = repetition.unsqueeze(1)
    logits = torch.where(t.seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    logits = logits - frequency.unsqueeze(1) * t.output_counts
    return logits - presence.unsqueeze(1) * (t.output_counts > 0).float()


def _random(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    logits = logits / torch.where(t.temperature > 0, t.temperature, 1.0).unsqueeze(1)
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * t.min_p.unsqueeze(1)
    logits = logits.masked_fill(probs < threshold, float("-inf"))
    probs = top_k_top_p(logits, t.top_k, t.top_p).softmax(dim=-1)
    return (probs / exponential(t.seeds, t.counters, logits.shape[1])).argmax(dim=-1)


def top_k_top_p(logits: torch.Tensor, k: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """-inf outside each row's top-k and nucleus (k = vocab and p = 1: nothing masked)."""
    sorted_logits, order = logits.sort(dim=-1)
    kth = sorted_logits.gather(1, (logits.shape[1] - k).clamp(min=0).unsqueeze(1))
    sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - p).unsqueeze(1)
    drop[:, -1] = False  # always keep the most likely token
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter(1, order, sorted_logits)


def exponential(seeds: torch.Tensor, counters: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Exp(1) draws [R, V] from a hash of (seed, counter, token id): murmur3's 32-bit
    finalizer on int64 lanes (every product masked back to 32 bits)."""
    row = _fmix32(_fmix32(_fmix32(seeds & _M32) ^ ((seeds >> 32) & _M32)) ^ (counters & _M32))
    token = torch.arange(vocab_size, dtype=torch.int64, device=seeds.device)
    h = _fmix32(_fmix32(row.unsqueeze(1) ^ ((token * 0x9E3779B1) & _M32)))
    uniform = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))  # (0, 1)
    return -uniform.log()


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, k: int):
    """[R, 1 + k] ids and logprobs (the given token first, then the top k) and [R] ranks."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=-1) + 1
    top_values, top_ids = logprobs.topk(k, dim=-1)
    return torch.cat([token_ids.unsqueeze(1), top_ids], dim=1), torch.cat([chosen, top_values], dim=1), ranks
