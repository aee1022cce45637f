"""Plain-torch references for every kernel, and a random paged-batch builder for tests.

Used by this package's and octavo-rocm's tests; handy for a vendor checking a port.
The references follow HF transformers' math (fp64/fp32 where HF upcasts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


# ----------------------------------------------------------------------------- norms, rope


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                 gemma: bool = False):
    if residual is not None:
        x = x + residual
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    if gemma:
        y = (h * (1.0 + weight.float())).to(x.dtype)
    else:
        y = (weight * h.to(x.dtype)).to(x.dtype)
    return y if residual is None else (y, x)


def rotary_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
               is_neox: bool = True):
    rot = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache[positions].float().chunk(2, dim=-1)  # [T, rot/2]

    def apply(x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xr = xf[..., :rot]
        if is_neox:
            x1, x2 = xr.chunk(2, dim=-1)
        else:
            x1, x2 = xr[..., 0::2], xr[..., 1::2]
        c, s = cos[:, None, :], sin[:, None, :]
        o1, o2 = x1 * c - x2 * s, x2 * c + x1 * s
        out = torch.cat([o1, o2], -1) if is_neox else torch.stack([o1, o2], -1).flatten(-2)
        return torch.cat([out, xf[..., rot:]], -1).to(x.dtype)

    return apply(q), apply(k)


# ----------------------------------------------------------------------------- KV + attention


def reshape_and_cache_ref(key, value, key_cache, value_cache, slot_mapping) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    kc = key_cache.view(-1, *key_cache.shape[2:])
    vc = value_cache.view(-1, *value_cache.shape[2:])
    kc[slots] = key[keep].to(kc.dtype)
    vc[slots] = value[keep].to(vc.dtype)


def attention_ref(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                  query_lens: list[int], scale: float, sliding_window: int | None = None,
                  softcap: float | None = None) -> torch.Tensor:
    """q [T, H, D]; keys/values per request [seq_len, KVH, D] (whole context incl. new tokens)."""
    out = torch.empty(q.shape, dtype=torch.float64)
    start = 0
    for k, v, ql in zip(keys, values, query_lens):
        seq_len = k.shape[0]
        qs = q[start:start + ql].double()  # [ql, H, D]
        rep = q.shape[1] // k.shape[1]
        kk = k.double().repeat_interleave(rep, dim=1)
        vv = v.double().repeat_interleave(rep, dim=1)
        s = torch.einsum("qhd,khd->hqk", qs, kk) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        qpos = torch.arange(seq_len - ql, seq_len)[:, None]
        kpos = torch.arange(seq_len)[None, :]
        visible = kpos <= qpos
        if sliding_window:
            visible &= qpos - kpos < sliding_window
        s = s.masked_fill(~visible, float("-inf"))
        out[start:start + ql] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vv)
        start += ql
    return out


@dataclass
class PagedBatch:
    """A random varlen batch already laid out in a paged cache (see `make_paged_batch`)."""

    q: torch.Tensor  # [T, H, D]
    k_new: torch.Tensor  # [T, KVH, D] this step's keys
    v_new: torch.Tensor
    keys: list[torch.Tensor]  # per request, whole context [seq_len, KVH, D]
    values: list[torch.Tensor]
    kv_cache: torch.Tensor  # [2, num_blocks, block_size, KVH, D]; context written, new tokens not
    query_start_loc: torch.Tensor  # int32 [B + 1]
    seq_lens: torch.Tensor  # int32 [B]
    block_tables: torch.Tensor  # int32 [B, max_blocks], shuffled non-contiguous ids, 0-padded
    slot_mapping: torch.Tensor  # int64 [T]
    query_lens: list[int]
    block_size: int


def make_paged_batch(requests: list[tuple[int, int]], *, num_heads: int, num_kv_heads: int, head_dim: int,
                     block_size: int, dtype: torch.dtype, kv_dtype: torch.dtype | None = None,
                     spare_blocks: int = 3, seed: int = 0, fill: float = float("nan")) -> PagedBatch:
    """requests: (context_len, query_len) each. Block ids are a random permutation (so tables are
    ragged and non-contiguous); unused cache memory holds `fill` (NaN: any read of it shows)."""
    g = torch.Generator().manual_seed(seed)
    kv_dtype = kv_dtype or dtype
    nblocks = [-(-(c + q) // block_size) for c, q in requests]
    total_blocks = sum(nblocks) + spare_blocks
    perm = torch.randperm(total_blocks, generator=g)
    kv_cache = torch.full((2, total_blocks, block_size, num_kv_heads, head_dim), fill, dtype=kv_dtype)
    max_blocks = max(nblocks)
    block_tables = torch.zeros(len(requests), max_blocks, dtype=torch.int32)
    keys, values, qs, k_new, v_new, slots, qsl = [], [], [], [], [], [], [0]
    used = 0
    for i, (ctx, ql) in enumerate(requests):
        seq_len = ctx + ql
        ids = perm[used:used + nblocks[i]]
        used += nblocks[i]
        block_tables[i, :len(ids)] = ids.to(torch.int32)
        k = torch.randn(seq_len, num_kv_heads, head_dim, generator=g).to(kv_dtype)
        v = torch.randn(seq_len, num_kv_heads, head_dim, generator=g).to(kv_dtype)
        pos = torch.arange(seq_len)
        slot = ids[pos // block_size].long() * block_size + pos % block_size
        kv_cache[0].view(-1, num_kv_heads, head_dim)[slot[:ctx]] = k[:ctx]
        kv_cache[1].view(-1, num_kv_heads, head_dim)[slot[:ctx]] = v[:ctx]
        keys.append(k)
        values.append(v)
        k_new.append(k[ctx:].to(dtype))
        v_new.append(v[ctx:].to(dtype))
        slots.append(slot[ctx:])
        qs.append(torch.randn(ql, num_heads, head_dim, generator=g).to(dtype))
        qsl.append(qsl[-1] + ql)
    return PagedBatch(
        q=torch.cat(qs), k_new=torch.cat(k_new), v_new=torch.cat(v_new), keys=keys, values=values,
        kv_cache=kv_cache, query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor([c + q for c, q in requests], dtype=torch.int32),
        block_tables=block_tables, slot_mapping=torch.cat(slots), query_lens=[q for _, q in requests],
        block_size=block_size)
