"""Sampling primitives a backend may replace with faster kernels (the `sampler_ops` hook)."""
from __future__ import annotations

import functools

import torch


class SamplerOps:
    def apply_token_bitmask(self, logits: torch.Tensor, bitmask: torch.Tensor,
                            rows: torch.Tensor | None) -> None:
        """Guided decoding: -inf on the tokens a grammar forbids, in place.

        bitmask [R, W] int32 on logits' device, bit j of word k = token 32 * k + j allowed;
        rows [R] long: the logits rows it constrains (None: all, in order). Ids past 32 * W
        (a model vocabulary wider than the tokenizer's) are forbidden. Each mask byte picks a
        row of 8 biases (0 or -inf) that is added: several times faster than a masked_fill
        with an unpacked boolean mask on CPUs.
        """
        table = _byte_biases(logits.device, logits.dtype)
        bias = table.index_select(0, bitmask.view(torch.uint8).flatten().long()).view(bitmask.shape[0], -1)
        width = min(logits.shape[1], bias.shape[1])
        target = logits if rows is None else logits[rows]
        target[:, :width].add_(bias[:, :width])
        target[:, width:] = float("-inf")
        if rows is not None:
            logits[rows] = target

    def top_k_top_p(self, logits: torch.Tensor, k: torch.Tensor | None,
                    p: torch.Tensor | None) -> torch.Tensor:
        """Mask logits outside each row's top-k / nucleus with -inf. k [B] long, p [B] float."""
        sorted_logits, order = logits.sort(dim=-1)
        if k is not None:
            kth = sorted_logits.gather(1, (logits.shape[1] - k).clamp(min=0).unsqueeze(1))
            sorted_logits.masked_fill_(sorted_logits < kth, float("-inf"))
        if p is not None:
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= (1 - p).unsqueeze(1)
            drop[:, -1] = False  # always keep the most likely token
            sorted_logits.masked_fill_(drop, float("-inf"))
        return logits.scatter_(1, order, sorted_logits)

    def random_sample(self, probs: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
        """Exponential race: argmax(p / q), q ~ Exp(1) — one draw per token, no cumsum.

        Rows with their own generator draw from it alone, so a seeded request samples the
        same tokens whatever else is in the batch.
        """
        q = torch.empty_like(probs)
        if len(generators) < probs.shape[0]:
            q.exponential_()
        for row, gen in generators.items():
            q[row].exponential_(generator=gen)
        return probs.div_(q).max(dim=-1).indices


@functools.cache
def _byte_biases(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 8]: row b holds 0 where bit i of byte b is set, else -inf (little-endian words)."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    return torch.zeros(256, 8, dtype=dtype).masked_fill_(bits == 0, float("-inf")).to(device)
