"""Per-step sampling tensors, built from the requests' SamplingParams."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.worker.states import RequestState
from octavo.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingMetadata:
    all_greedy: bool
    greedy: torch.Tensor | None  # [B] bool, None when no row is greedy
    temperature: torch.Tensor | None  # [B], 1.0 on greedy rows; None when all greedy
    top_k: torch.Tensor | None
    top_p: torch.Tensor | None
    min_p: torch.Tensor | None
    generators: dict[int, torch.Generator]
    # Logit processing, None when no row uses it.
    penalties: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # presence, frequency, repetition
    prompt_token_ids: list[list[int]] | None
    output_token_ids: list[list[int]] | None
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # rows, token ids, values
    allowed: tuple[torch.Tensor, torch.Tensor] | None  # rows, token ids
    blocked: tuple[torch.Tensor, torch.Tensor] | None  # rows, token ids (min_tokens)
    max_num_logprobs: int | None
    grammar: tuple[torch.Tensor, torch.Tensor | None] | None = None  # bitmask, its rows (None: all)

    @classmethod
    def build(cls, reqs: list[RequestState], generators: dict[int, torch.Generator],
              device: torch.device,
              grammar: tuple[torch.Tensor, list[int]] | None = None) -> SamplingMetadata:
        """O(requests) per step; token lists are copied only when penalties need them.

        `grammar`: the step's CPU bitmask and the row of `reqs` each of its rows constrains.
        """
        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        params = [r.sampling_params for r in reqs]
        greedy = [p.greedy for p in params]
        all_greedy = all(greedy)
        random_rows = [p for p in params if not p.greedy]
        md = cls(
            all_greedy=all_greedy,
            greedy=col(greedy, torch.bool) if any(greedy) and not all_greedy else None,
            temperature=None if all_greedy else col([1.0 if p.greedy else p.temperature for p in params],
                                                     torch.float32),
            top_k=col([p.top_k or (1 << 30) for p in params], torch.long)
            if any(p.top_k for p in random_rows) else None,
            top_p=col([p.top_p for p in params], torch.float32)
            if any(p.top_p < 1.0 for p in random_rows) else None,
            min_p=col([p.min_p for p in params], torch.float32)
            if any(p.min_p > 0.0 for p in random_rows) else None,
            generators=generators,
            penalties=None, prompt_token_ids=None, output_token_ids=None,
            bias=None, allowed=None, blocked=None,
            max_num_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=None),
        )
        if any(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0 for p in params):
            md.penalties = (col([p.presence_penalty for p in params], torch.float32),
                            col([p.frequency_penalty for p in params], torch.float32),
                            col([p.repetition_penalty for p in params], torch.float32))
            md.prompt_token_ids = [r.token_ids[:r.num_prompt_tokens] for r in reqs]
            md.output_token_ids = [r.output_token_ids for r in reqs]
        md.bias = _sparse([(i, t, v) for i, p in enumerate(params) for t, v in (p.logit_bias or {}).items()],
                          device, with_values=True)
        md.allowed = _sparse([(i, t) for i, p in enumerate(params) for t in (p.allowed_token_ids or ())],
                             device)
        md.blocked = _sparse([(i, t) for i, r in enumerate(reqs)
                              if len(r.token_ids) - r.num_prompt_tokens < r.sampling_params.min_tokens
                              for t in _stop_ids(r.sampling_params, r.eos_token_id)], device)
        if grammar is not None:
            bitmask, rows = grammar
            md.grammar = (bitmask.to(device, non_blocking=True),
                          None if rows == list(range(len(reqs))) else col(rows, torch.long))
        return md


def _stop_ids(params: SamplingParams, eos_id: int | None) -> list[int]:
    ids = list(params.stop_token_ids)
    if eos_id is not None and not params.ignore_eos:
        ids.append(eos_id)
    return ids


def _sparse(entries: list[tuple], device: torch.device, with_values: bool = False):
    if not entries:
        return None
    cols = list(zip(*entries))
    rows = torch.tensor(cols[0], dtype=torch.long, device=device)
    ids = torch.tensor(cols[1], dtype=torch.long, device=device)
    if with_values:
        return rows, ids, torch.tensor(cols[2], dtype=torch.float32, device=device)
    return rows, ids
