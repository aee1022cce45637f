"""Paged attention for varlen batches that mix prefill chunks and decodes.

Cache layout, per block and kv head, as the C++ decode kernel wants it: K [head_dim,
block_size] (token-minor, so AVX-512 scores 16 tokens per vector op) and V [block_size,
head_dim]; or, for bf16 on CPUs with AMX, the transpose (K [block_size, head_dim], V
[head_dim, block_size]: the row-major tile operands). Decodes run batched in that kernel,
which reads the cache in place; without it (no AVX-512 or no compiler) their blocks are
gathered and padded positions masked for torch's SDPA. Each prefill chunk attends alone
through SDPA; a chunk with no earlier context skips the gather.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from octavo.backend import AttentionBackend, AttentionSpec, BatchLayout


@dataclass(slots=True)
class DecodeBatch:
    tokens: slice | torch.Tensor  # rows of the flat batch; a slice when they lead the batch
    block_table: torch.Tensor  # [Bd, nb] int32
    seq_lens: torch.Tensor  # [Bd] int32


@dataclass(slots=True)
class PrefillChunk:
    start: int  # token offset in the flat batch
    end: int
    block_ids: torch.Tensor | None  # None: no earlier context, attend to the chunk alone
    seq_len: int


@dataclass(slots=True)
class CpuAttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: block * block_size + offset of each new token
    decode: DecodeBatch | None
    prefills: list[PrefillChunk]
    decode_only: bool  # every token of the step is a decode, in the leading rows, none padded
    masks: dict = field(default_factory=dict)  # (kind, index, window) -> bool mask, per step


class TorchPagedAttention(AttentionBackend):
    def __init__(self, native=None):
        self.native = native  # the compiled kernels module, or None for the torch path
        self.amx = native is not None and native.amx_available()

    def uses_amx(self, spec: AttentionSpec, kv_cache: torch.Tensor) -> bool:
        """Whether this layer's cache has the AMX layout (fixed per layer, so writes and reads agree)."""
        block_size = kv_cache.shape[-1] // spec.head_dim
        return (self.amx and kv_cache.dtype == torch.bfloat16 and block_size % 16 == 0
                and spec.head_dim % 32 == 0 and spec.num_heads // spec.num_kv_heads <= 16)

    def kv_cache_shape(self, num_blocks, block_size, num_kv_heads, head_dim):
        return (2, num_blocks, num_kv_heads, block_size * head_dim)

    @staticmethod
    def block_views(kv_cache: torch.Tensor, head_dim: int, amx: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """K [num_blocks, kv_heads, head_dim, block_size] and V [num_blocks, kv_heads, block_size,
        head_dim]; with `amx` K [.., block_size, head_dim] and V [.., head_dim, block_size]."""
        num_blocks, heads, size = kv_cache.shape[1:]
        dim_major, token_major = (num_blocks, heads, head_dim, size // head_dim), (num_blocks, heads, -1, head_dim)
        k_shape, v_shape = (token_major, dim_major) if amx else (dim_major, token_major)
        return kv_cache[0].view(k_shape), kv_cache[1].view(v_shape)

    @staticmethod
    def token_views(k_cache: torch.Tensor, v_cache: torch.Tensor, amx: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """`block_views`' K and V as [num_blocks, block_size, kv_heads, head_dim] (strided) views."""
        as_tokens = lambda x, token_major: x.transpose(1, 2) if token_major else x.permute(0, 3, 1, 2)  # noqa: E731
        return as_tokens(k_cache, amx), as_tokens(v_cache, not amx)

    def write(self, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, amx: bool) -> None:
        """Store new tokens' k/v [T, Hkv, D] at their slots; the caches are `block_views`."""
        if self.native is not None:
            return self.native.write_kv(k_cache, v_cache, k, v, slot_mapping, amx)
        k_tokens, v_tokens = self.token_views(k_cache, v_cache, amx)
        bs = k_tokens.shape[1]
        k_tokens.index_put_((slot_mapping // bs, slot_mapping % bs), k)
        v_tokens.index_put_((slot_mapping // bs, slot_mapping % bs), v)

    def build_metadata(self, layout: BatchLayout, device: torch.device) -> CpuAttentionMetadata:
        starts = layout.query_start_loc.tolist()
        seq_lens = layout.seq_lens.tolist()
        decode_rows, prefills = [], []
        bs = layout.block_size
        for i, seq_len in enumerate(seq_lens):
            query_len = starts[i + 1] - starts[i]
            if query_len == 0:  # a padding request of a static-shape step
                continue
            if query_len == 1:
                decode_rows.append(i)
                continue
            nb = -(-seq_len // bs)
            block_ids = layout.block_tables[i, :nb] if seq_len > query_len else None
            prefills.append(PrefillChunk(starts[i], starts[i + 1], block_ids, seq_len))
        decode, leading = None, False
        if decode_rows:
            rows = torch.tensor(decode_rows)
            dec_lens = layout.seq_lens[rows]
            nb = -(-int(dec_lens.max()) // bs)
            leading = decode_rows[-1] == len(decode_rows) - 1  # then their tokens are 0..Bd-1
            tokens = slice(0, len(decode_rows)) if leading else layout.query_start_loc[rows].long().to(device)
            decode = DecodeBatch(tokens, layout.block_tables[rows, :nb].contiguous().to(device), dec_lens.to(device))
        # Decode-only: no prefill, and no padded tokens past the decodes (static-shape steps).
        decode_only = leading and not prefills and len(decode_rows) == layout.slot_mapping.numel()
        return CpuAttentionMetadata(layout.slot_mapping.to(device), decode, prefills, decode_only)

    def forward(self, spec: AttentionSpec, q, k, v, kv_cache, md: CpuAttentionMetadata):
        amx = self.uses_amx(spec, kv_cache)
        caches = self.block_views(kv_cache, spec.head_dim, amx)
        self.write(*caches, md.slot_mapping, k, v, amx)
        if md.decode_only:
            return self._decode(spec, q, caches, md, amx)
        k_cache, v_cache = self.token_views(*caches, amx)
        out = torch.empty_like(q)
        if md.decode is not None:
            out[md.decode.tokens] = self._decode(spec, q[md.decode.tokens], caches, md, amx)
        for n, chunk in enumerate(md.prefills):
            out[chunk.start:chunk.end] = self._prefill(spec, n, chunk, q, k, v, k_cache, v_cache, md)
        return out

    def _decode(self, spec, q, caches, md, amx):
        dec = md.decode
        if self.native is not None:
            return self.native.paged_decode(q, *caches, dec.block_table, dec.seq_lens, spec.scale,
                                            spec.sliding_window or 0, spec.logit_softcap or 0.0, amx)
        k_cache, v_cache = self.token_views(*caches, amx)
        num, nb = dec.block_table.shape
        keys = _gather(k_cache, dec.block_table, num)  # [Bd, Hkv, L, D]
        values = _gather(v_cache, dec.block_table, num)
        key = ("decode", 0, spec.sliding_window)
        mask = md.masks.get(key)
        if mask is None:
            pos = torch.arange(keys.shape[2], device=q.device)
            lens = dec.seq_lens.unsqueeze(1)
            mask = pos < lens
            if spec.sliding_window is not None:
                mask &= pos >= lens - spec.sliding_window
            mask = md.masks[key] = mask[:, None, None, :]
        unwritten = ~mask[:, :, 0, :, None]  # slots past each sequence may hold a former owner's NaN
        keys, values = keys.masked_fill(unwritten, 0), values.masked_fill(unwritten, 0)
        return _attend(spec, q.unsqueeze(2), keys, values, mask).squeeze(2)

    def _prefill(self, spec, n, chunk, q, k, v, k_cache, v_cache, md):
        query = q[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)  # [1, H, Lq, D]
        if chunk.block_ids is None:
            keys = k[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
            values = v[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
            if spec.sliding_window is None or spec.sliding_window >= chunk.seq_len:
                return _attend(spec, query, keys, values, None).squeeze(0).transpose(0, 1)
        else:
            keys = _gather(k_cache, chunk.block_ids.unsqueeze(0), 1)[:, :, :chunk.seq_len]
            values = _gather(v_cache, chunk.block_ids.unsqueeze(0), 1)[:, :, :chunk.seq_len]
        key = ("prefill", n, spec.sliding_window)
        mask = md.masks.get(key)
        if mask is None:
            query_len = chunk.end - chunk.start
            q_pos = torch.arange(chunk.seq_len - query_len, chunk.seq_len, device=q.device).unsqueeze(1)
            k_pos = torch.arange(chunk.seq_len, device=q.device).unsqueeze(0)
            mask = k_pos <= q_pos
            if spec.sliding_window is not None:
                mask &= k_pos > q_pos - spec.sliding_window
            mask = md.masks[key] = mask[None, None]
        return _attend(spec, query, keys, values, mask).squeeze(0).transpose(0, 1)


def _gather(cache: torch.Tensor, block_table: torch.Tensor, num: int) -> torch.Tensor:
    """[num_blocks, bs, Hkv, D] x [B, nb] -> [B, Hkv, nb * bs, D], copying whole blocks."""
    blocks = cache.index_select(0, block_table.flatten())
    _, bs, heads, dim = blocks.shape
    return blocks.reshape(num, -1, heads, dim).transpose(1, 2)


def _attend(spec: AttentionSpec, q, k, v, mask):
    """q [B, H, Lq, D], k/v [B, Hkv, L, D], mask bool broadcastable to [B, H, Lq, L] or None (causal)."""
    if spec.logit_softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                              scale=spec.scale, enable_gqa=True)
    groups = spec.num_heads // spec.num_kv_heads
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * spec.scale
    scores = torch.tanh(scores / spec.logit_softcap) * spec.logit_softcap
    if mask is None:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)
