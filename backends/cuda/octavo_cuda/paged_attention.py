"""Unified paged attention for varlen batches mixing prefill chunks and decodes.

One kernel serves every request shape (in the style of vLLM's triton_unified_attention and
the "prefix prefill" kernel): queries are cut into blocks of BLOCK_Q tokens per request, and
a program owns one query block of one request for one KV head, with all the query heads
that share that KV head (GQA) stacked as rows: BLOCK_M = BLOCK_Q * heads_per_kv rows. It
walks the request's block table one KV block at a time with an online softmax.

The grid is (num_tokens // BLOCK_Q + num_seqs, num_kv_heads), an upper bound on the number of
query blocks that depends only on the token and request counts, so a decode step can be
captured in a CUDA graph; each program finds its request by binary search over
query_start_loc and surplus programs return at once.

Masking, for a query at absolute position p (= context_len + its index in this step):
key j is visible iff j <= p (causal), and p - j < sliding_window when a window is set.
An optional logit softcap applies softcap * tanh(s / softcap) to the scaled scores.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_cuda.launch import CUDA_LAUNCH, Launch, LaunchConfig, next_power_of_2


@triton.jit
def _find_seq_idx(query_start_loc_ptr, q_block_global_idx, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest s with query_start_loc[s] // BLOCK_Q + s <= q_block_global_idx."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid)
        if start // BLOCK_Q + mid <= q_block_global_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def unified_attention_kernel(
    out_ptr,  # [T, H, D]
    q_ptr,  # [T, H, D]
    key_cache_ptr, value_cache_ptr,  # [num_blocks, BLOCK_SIZE, KVH, D]
    block_tables_ptr,  # [B, max_blocks] int32
    seq_lens_ptr,  # [B] int32
    query_start_loc_ptr,  # [B + 1] int32
    scale,  # softmax scale (fp32)
    softcap,  # logit softcap (fp32), used iff USE_SOFTCAP
    sliding_window,  # window size (i32), used iff USE_WINDOW
    num_seqs,
    stride_q_t, stride_q_h,
    stride_o_t, stride_o_h,
    stride_c_b, stride_c_s, stride_c_h,
    stride_bt,
    head_dim,
    HEADS_PER_KV: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    USE_SOFTCAP: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    q_block_global_idx = tl.program_id(0)
    kv_head = tl.program_id(1)

    seq_idx = _find_seq_idx(query_start_loc_ptr, q_block_global_idx, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq_idx)
    q_block_local_idx = q_block_global_idx - (q_start // BLOCK_Q + seq_idx)
    query_len = tl.load(query_start_loc_ptr + seq_idx + 1) - q_start
    if q_block_local_idx * BLOCK_Q >= query_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq_idx)
    context_len = seq_len - query_len

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    query_idx = q_block_local_idx * BLOCK_Q + offs_m // HEADS_PER_KV  # index within this step
    head = kv_head * HEADS_PER_KV + offs_m % HEADS_PER_KV
    row_valid = (offs_m < BLOCK_Q * HEADS_PER_KV) & (query_idx < query_len)
    dim_valid = offs_d < head_dim
    token = (q_start + query_idx).to(tl.int64)

    q = tl.load(q_ptr + token[:, None] * stride_q_t + head[:, None] * stride_q_h + offs_d[None, :],
                mask=row_valid[:, None] & dim_valid[None, :], other=0.0)

    query_pos = context_len + query_idx  # absolute position of each row's query
    # Keys this block can see: [first_key, last_key).
    last_key = tl.minimum(context_len + (q_block_local_idx + 1) * BLOCK_Q, seq_len)
    first_tile = 0
    if USE_WINDOW:
        first_key = tl.maximum(context_len + q_block_local_idx * BLOCK_Q - sliding_window + 1, 0)
        first_tile = first_key // BLOCK_SIZE
    num_tiles = tl.cdiv(last_key, BLOCK_SIZE)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    qk_scale = scale * 1.4426950408889634  # log2(e): softmax in base 2

    offs_n = tl.arange(0, BLOCK_SIZE)
    block_table = block_tables_ptr + seq_idx.to(tl.int64) * stride_bt
    for tile in range(first_tile, num_tiles):
        block_id = tl.load(block_table + tile).to(tl.int64)
        key_pos = tile * BLOCK_SIZE + offs_n
        key_valid = key_pos < seq_len
        kv_off = block_id * stride_c_b + offs_n * stride_c_s + kv_head * stride_c_h
        # K^T tile [HEAD_DIM_PAD, BLOCK_SIZE]; V tile [BLOCK_SIZE, HEAD_DIM_PAD].
        k = tl.load(key_cache_ptr + kv_off[None, :] + offs_d[:, None],
                    mask=dim_valid[:, None] & key_valid[None, :], other=0.0)
        v = tl.load(value_cache_ptr + kv_off[:, None] + offs_d[None, :],
                    mask=key_valid[:, None] & dim_valid[None, :], other=0.0)
        k = k.to(q.dtype)
        v = v.to(q.dtype)

        s = tl.dot(q, k, input_precision=DOT_PRECISION)
        if USE_SOFTCAP:
            # softcap * tanh(x / softcap), tanh via sigmoid (portable across NVIDIA and AMD).
            x = s * (scale / softcap)
            s = softcap * (2.0 * tl.sigmoid(2.0 * x) - 1.0) * 1.4426950408889634
        else:
            s = s * qk_scale
        visible = row_valid[:, None] & key_valid[None, :] & (key_pos[None, :] <= query_pos[:, None])
        if USE_WINDOW:
            visible = visible & (query_pos[:, None] - key_pos[None, :] < sliding_window)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_new = tl.where(m_new > float("-inf"), m_new, 0.0)  # rows with nothing visible yet
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(out_ptr + token[:, None] * stride_o_t + head[:, None] * stride_o_h + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_valid[None, :])


def query_block_shape(heads_per_kv: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_Q): rows per program (>= 16 for tl.dot) and query tokens per program."""
    block_m = 16 if heads_per_kv <= 16 else next_power_of_2(heads_per_kv)
    return block_m, block_m // heads_per_kv


def unified_attention_launch(
    out: torch.Tensor, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
    *, num_seqs: int, scale: float, sliding_window: int | None = None,
    softcap: float | None = None, launch: LaunchConfig = CUDA_LAUNCH,
) -> Launch:
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, cache_dim = key_cache.shape
    if cache_dim != head_dim:
        raise ValueError(f"cache head_dim {cache_dim} != query head_dim {head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not split over {num_kv_heads} kv heads")
    if q.stride(-1) != 1 or out.stride(-1) != 1 or key_cache.stride(-1) != 1:
        raise ValueError("attention needs the head dimension contiguous")
    if key_cache.stride() != value_cache.stride():
        raise ValueError("key and value caches must share strides")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    heads_per_kv = num_heads // num_kv_heads
    block_m, block_q = query_block_shape(heads_per_kv)
    use_window = sliding_window is not None and sliding_window > 0
    use_softcap = softcap is not None and softcap > 0
    return Launch(
        kernel=unified_attention_kernel,
        grid=(num_tokens // block_q + num_seqs, num_kv_heads),
        args=dict(
            out_ptr=out, q_ptr=q, key_cache_ptr=key_cache, value_cache_ptr=value_cache,
            block_tables_ptr=block_tables, seq_lens_ptr=seq_lens, query_start_loc_ptr=query_start_loc,
            scale=float(scale), softcap=float(softcap) if use_softcap else 1.0,
            sliding_window=int(sliding_window) if use_window else 0,
            num_seqs=num_seqs,
            stride_q_t=q.stride(0), stride_q_h=q.stride(1),
            stride_o_t=out.stride(0), stride_o_h=out.stride(1),
            stride_c_b=key_cache.stride(0), stride_c_s=key_cache.stride(1), stride_c_h=key_cache.stride(2),
            stride_bt=block_tables.stride(0),
            head_dim=head_dim,
        ),
        constexprs=dict(
            HEADS_PER_KV=heads_per_kv, BLOCK_Q=block_q, BLOCK_M=block_m,
            HEAD_DIM_PAD=max(16, next_power_of_2(head_dim)), BLOCK_SIZE=block_size,
            USE_SOFTCAP=use_softcap, USE_WINDOW=use_window,
            # fp32 models are for exactness: no TF32. 16-bit inputs take the target default.
            DOT_PRECISION="ieee" if q.dtype == torch.float32 else None,
        ),
        num_warps=launch.attention_warps,
        num_stages=launch.num_stages,
    )


def unified_attention(
    out: torch.Tensor, q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
    *, num_seqs: int, scale: float, sliding_window: int | None = None,
    softcap: float | None = None, launch: LaunchConfig = CUDA_LAUNCH,
) -> torch.Tensor:
    """Paged attention: out[t] = softmax(q[t] K^T * scale) V over each request's cached keys.

    q/out [T, H, D]; caches [num_blocks, block_size, KVH, D] (this step's K/V already written);
    block_tables [B, max_blocks] int32; seq_lens [B] int32 (context incl. this step);
    query_start_loc [B + 1] int32. Tokens past query_start_loc[num_seqs] are left untouched.
    """
    unified_attention_launch(out, q, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                             num_seqs=num_seqs, scale=scale, sliding_window=sliding_window,
                             softcap=softcap, launch=launch).run()
    return out

