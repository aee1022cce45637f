"""Paged attention in plain torch, one request at a time: the contract's AttentionBackend with
nothing but its meaning.

The KV cache of a layer is one tensor [2, num_blocks, block_size, num_kv_heads, head_dim]
(K, then V). A token at position p of a request lives in block `block_table[p // block_size]`
at offset `p % block_size`; the runner has already turned that into `slot_mapping`
(block * block_size + offset) for this step's tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.backend import AttentionBackend, AttentionSpec, BatchLayout


@dataclass(slots=True)
class Step:
    slot_mapping: torch.Tensor  # [T]
    query_start_loc: list[int]  # [B + 1]
    seq_lens: list[int]  # [B]
    block_tables: torch.Tensor  # [B, max_blocks]
    block_size: int


class ExampleAttention(AttentionBackend):
    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
        return (2, num_blocks, block_size, num_kv_heads, head_dim)

    def build_metadata(self, layout: BatchLayout, device: torch.device) -> Step:
        return Step(layout.slot_mapping.to(device), layout.query_start_loc.tolist(), layout.seq_lens.tolist(),
                    layout.block_tables.to(device), layout.block_size)

    def forward(self, spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, step: Step) -> torch.Tensor:
        # 1. Store this step's keys and values at their slots (padding tokens have slot -1).
        keys, values = kv_cache[0].flatten(0, 1), kv_cache[1].flatten(0, 1)  # [slots, Hkv, D]
        written = step.slot_mapping >= 0
        keys[step.slot_mapping[written]] = k[written]
        values[step.slot_mapping[written]] = v[written]
        # 2. Each request's queries attend to its whole context, read back from its blocks.
        out = torch.zeros_like(q)
        for i, seq_len in enumerate(step.seq_lens):
            start, end = step.query_start_loc[i], step.query_start_loc[i + 1]
            if end == start:
                continue
            blocks = step.block_tables[i, :-(-seq_len // step.block_size)]
            context = torch.arange(seq_len)
            slots = blocks[context // step.block_size] * step.block_size + context % step.block_size
            out[start:end] = attend(spec, q[start:end], keys[slots], values[slots], seq_len)
        return out


def attend(spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Causal (and sliding-window) attention of the last len(q) positions over seq_len keys.

    q [Lq, H, D], k/v [L, Hkv, D]; each group of H / Hkv query heads shares a kv head (GQA).
    """
    groups = spec.num_heads // spec.num_kv_heads
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * spec.scale
    if spec.logit_softcap is not None:
        scores = torch.tanh(scores / spec.logit_softcap) * spec.logit_softcap
    q_pos = torch.arange(seq_len - len(q), seq_len).unsqueeze(1)
    k_pos = torch.arange(seq_len).unsqueeze(0)
    visible = k_pos <= q_pos
    if spec.sliding_window is not None:
        visible &= k_pos > q_pos - spec.sliding_window
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v.float()).to(q.dtype)
