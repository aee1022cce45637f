"""A step's requests as NxDI's forward inputs for the block KV layout (prefix caching).

Context encoding (a request with several new tokens) takes the whole sequence from position
0 with how much of it is cached (`computed_context_lens`): NxDI runs the rest, reading the
cached prefix through the block table and writing the new tokens' K/V to `slot_mapping`.
Token generation takes one token per request at its position. Block tables are the engine's
block ids, padded with block 0 to a common width (NxDI cuts or pads them to the bucket;
padding columns lie beyond every context length and are never read).
"""
from __future__ import annotations

import torch

from octavo.backend import RequestState


def slots(block_ids: list[int], block_size: int, start: int, stop: int) -> list[int]:
    """Cache slots of positions [start, stop): block_id * block_size + offset."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, stop)]


def block_tables(reqs: list[RequestState]) -> torch.Tensor:
    width = max(len(r.block_ids) for r in reqs)
    return torch.tensor([r.block_ids + [0] * (width - len(r.block_ids)) for r in reqs], dtype=torch.long)


def context_encoding(req: RequestState, num_new: int, block_size: int) -> dict[str, torch.Tensor]:
    """One request's prefill: tokens [num_computed_tokens, + num_new) after a cached prefix."""
    start, end = req.num_computed_tokens, req.num_computed_tokens + num_new
    return dict(
        input_ids=torch.tensor([req.token_ids[:end]], dtype=torch.long),
        position_ids=torch.arange(end, dtype=torch.long)[None],
        seq_ids=torch.zeros(1, dtype=torch.long),
        slot_mapping=torch.tensor([slots(req.block_ids, block_size, start, end)], dtype=torch.long),
        block_table=block_tables([req]),
        full_context_lens=torch.tensor([[end]], dtype=torch.long),
        computed_context_lens=torch.tensor([[start]], dtype=torch.long))


def token_generation(reqs: list[RequestState], block_size: int) -> dict[str, torch.Tensor]:
    """One new token per request, at position num_computed_tokens."""
    positions = [r.num_computed_tokens for r in reqs]
    return dict(
        input_ids=torch.tensor([[r.token_ids[p]] for r, p in zip(reqs, positions)], dtype=torch.long),
        position_ids=torch.tensor(positions, dtype=torch.long)[:, None],
        seq_ids=torch.arange(len(reqs), dtype=torch.long),
        slot_mapping=torch.tensor([slots(r.block_ids, block_size, p, p + 1) for r, p in zip(reqs, positions)],
                                  dtype=torch.long),
        block_table=block_tables(reqs),
        full_context_lens=torch.tensor(positions, dtype=torch.long)[:, None] + 1,
        computed_context_lens=torch.tensor(positions, dtype=torch.long)[:, None])
