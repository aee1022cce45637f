"""Ragged paged attention over block tables, at static shapes, for XLA.

The KV cache of a layer is one tensor of slots, `[(num_blocks + 1) * block_size, 2 * kv_heads,
head_dim]`, K and V interleaved on the head axis (torch-xla's `ragged_paged_attention`
layout: heads 0, 2, 4... are K, 1, 3, 5... are V). Viewed as `[pages, page_size, 2 * kv_heads,
head_dim]` it is the kernel's `kv_pages`. The last page is reserved: padding tokens write
there (`pad_slot`) and no block table ever names it.

New K/V are written with one `index_copy_` into the base tensor through the slot mapping,
so XLA updates the cache in place (an in-place write to a view of it is not aliased and
would copy the whole cache every step).

On a TPU the attention is torch-xla's Pallas kernel. Elsewhere (XLA's CPU client, the
testing mode) it is `static_ragged_attention`: the same inputs, the same result, written
with fixed-shape gathers and masks. torch-xla's own reference (`use_kernel=False`) loops
over the sequences on the host with data-dependent shapes, so it would compile a graph for
every batch; the tests check ours against it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.backend import AttentionBackend, AttentionSpec, BatchLayout

MASK_VALUE = -0.7 * torch.finfo(torch.float32).max  # torch-xla's: finite, so empty rows stay finite


@dataclass(slots=True)
class XlaAttentionMetadata:
    """One padded step, on the device, in the kernel's terms."""

    slot_mapping: torch.Tensor  # [T] int64, padding tokens at the reserved page
    kv_lens: torch.Tensor  # [R] int32, 0 for padding requests
    page_indices: torch.Tensor  # [R, width] int32
    cu_q_lens: torch.Tensor  # [R + 1] int32
    num_seqs: torch.Tensor  # [1] int32, the real requests


class XlaAttention(AttentionBackend):
    def __init__(self, block_size: int, use_kernel: bool):
        self.block_size = block_size
        self.use_kernel = use_kernel  # the Pallas kernel (a TPU), else the static reference

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int) -> tuple[int, ...]:
        return ((num_blocks + 1) * block_size, 2 * num_kv_heads, head_dim)  # +1: the padding page

    def build_metadata(self, layout: BatchLayout, device: torch.device) -> XlaAttentionMetadata:
        num_seqs = torch.tensor([int((layout.seq_lens > 0).sum())], dtype=torch.int32)
        return XlaAttentionMetadata(layout.slot_mapping.to(device), layout.seq_lens.to(device),
                                    layout.block_tables.to(device), layout.query_start_loc.to(device),
                                    num_seqs.to(device))

    def forward(self, spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, metadata: XlaAttentionMetadata) -> torch.Tensor:
        kv = torch.stack((k, v), dim=2).flatten(1, 2)  # [T, 2 * kv_heads, D]: K, V interleaved
        kv_cache.index_copy_(0, metadata.slot_mapping, kv.to(kv_cache.dtype))
        pages = kv_cache.view(-1, self.block_size, *kv_cache.shape[1:])
        args = (q, pages, metadata.kv_lens, metadata.page_indices, metadata.cu_q_lens, metadata.num_seqs)
        kwargs = dict(sm_scale=spec.scale, sliding_window=spec.sliding_window, soft_cap=spec.logit_softcap)
        if self.use_kernel:
            from torch_xla.experimental.custom_kernel import ragged_paged_attention

            return ragged_paged_attention(*args, **kwargs, use_kernel=True)
        return static_ragged_attention(*args, **kwargs)


def static_ragged_attention(q: torch.Tensor, kv_pages: torch.Tensor, kv_lens: torch.Tensor,
                            page_indices: torch.Tensor, cu_q_lens: torch.Tensor, num_seqs: torch.Tensor, *,
                            sm_scale: float, sliding_window: int | None = None,
                            soft_cap: float | None = None) -> torch.Tensor:
    """`ragged_paged_attention`'s math at shapes fixed by its inputs' sizes.

    q [T, H, D]; kv_pages [pages, page_size, 2 * KVH, D]; kv_lens [R]; page_indices [R, W];
    cu_q_lens [R + 1]; num_seqs [1]. Each request's queries are the last tokens of its
    context (causal), within `sliding_window` keys counting the query's own. Tokens past
    `cu_q_lens[num_seqs]` belong to no request: their rows are computed over nothing
    (finite garbage) and ignored. Every token gathers its request's pages, so this costs
    T x W x page_size: a reference for testing, not a kernel.
    """
    num_tokens, num_heads, head_dim = q.shape
    page_size, kv_heads = kv_pages.shape[1], kv_pages.shape[2] // 2
    num_reqs, width = page_indices.shape
    token = torch.arange(num_tokens, dtype=torch.int32, device=q.device)
    req = (cu_q_lens[1:].unsqueeze(0) <= token.unsqueeze(1)).sum(dim=1).clamp(max=num_reqs - 1)
    owned = token < cu_q_lens.index_select(0, num_seqs.long())  # [T]
    q_lens = cu_q_lens[1:] - cu_q_lens[:-1]
    q_pos = kv_lens[req] - q_lens[req] + token - cu_q_lens[req]  # each query's position
    kv = kv_pages[page_indices[req]].reshape(num_tokens, width * page_size, 2 * kv_heads, head_dim)
    k, v = kv[:, :, 0::2].float(), kv[:, :, 1::2].float()  # [T, L, KVH, D]
    scores = torch.einsum("tkgd,tlkd->tkgl", q.float().view(num_tokens, kv_heads, -1, head_dim), k) * sm_scale
    if soft_cap is not None:
        scores = torch.tanh(scores / soft_cap) * soft_cap
    k_pos = torch.arange(width * page_size, dtype=torch.int32, device=q.device)
    visible = (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)) & owned.unsqueeze(1)
    if sliding_window is not None:
        visible &= k_pos.unsqueeze(0) > (q_pos - sliding_window).unsqueeze(1)
    scores = scores.masked_fill(~visible[:, None, None, :], MASK_VALUE)
    out = torch.einsum("tkgl,tlkd->tkgd", scores.softmax(dim=-1), v)
    return out.reshape(num_tokens, num_heads, head_dim).to(q.dtype)
