"""Rotary position embedding on q and k, cos/sin looked up by position.

`cos_sin_cache` is [max_position, rotary_dim]: cos of each frequency in the first half,
sin in the second (vLLM's layout); `build_cos_sin_cache` makes the plain RoPE one, and a model
with scaled RoPE (llama3, yarn, ...) builds its own from its inv_freq the same way.
Neox style (HF `rotate_half`) pairs dim i with i + rotary_dim/2; GPT-J style pairs 2i, 2i+1.
Dims past `rotary_dim` (partial rotary) pass through. Math in fp32, one rounding at the end.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_cuda.launch import CUDA_LAUNCH, Launch, LaunchConfig, next_power_of_2


@triton.jit
def _rotate(x_ptr, stride_t, stride_h, token, cos, sin, num_heads,
            HEADS_PAD: tl.constexpr, ROT_HALF: tl.constexpr, ROT_HALF_PAD: tl.constexpr,
            IS_NEOX: tl.constexpr):
    heads = tl.arange(0, HEADS_PAD)
    offs = tl.arange(0, ROT_HALF_PAD)
    if IS_NEOX:
        i1 = offs
        i2 = offs + ROT_HALF
    else:
        i1 = 2 * offs
        i2 = 2 * offs + 1
    mask = (heads[:, None] < num_heads) & (offs[None, :] < ROT_HALF)
    base = x_ptr + token * stride_t + heads[:, None] * stride_h
    x1 = tl.load(base + i1[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + i2[None, :], mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(base + i1[None, :], o1.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(base + i2[None, :], o2.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rotary_kernel(
    positions_ptr, q_ptr, k_ptr, cos_sin_ptr,
    stride_q_t, stride_q_h, stride_k_t, stride_k_h, stride_cs,
    num_q_heads, num_kv_heads,
    ROT_HALF: tl.constexpr, ROT_HALF_PAD: tl.constexpr,
    Q_HEADS_PAD: tl.constexpr, K_HEADS_PAD: tl.constexpr,
    IS_NEOX: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs = tl.arange(0, ROT_HALF_PAD)
    m = offs < ROT_HALF
    cos = tl.load(cos_sin_ptr + pos * stride_cs + offs, mask=m, other=0.0).to(tl.float32)
    sin = tl.load(cos_sin_ptr + pos * stride_cs + ROT_HALF + offs, mask=m, other=0.0).to(tl.float32)
    _rotate(q_ptr, stride_q_t, stride_q_h, token, cos, sin, num_q_heads, Q_HEADS_PAD, ROT_HALF,
            ROT_HALF_PAD, IS_NEOX)
    _rotate(k_ptr, stride_k_t, stride_k_h, token, cos, sin, num_kv_heads, K_HEADS_PAD, ROT_HALF,
            ROT_HALF_PAD, IS_NEOX)


def build_cos_sin_cache(rotary_dim: int, max_position: int, base: float = 10000.0,
                        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                        inv_freq: torch.Tensor | None = None) -> torch.Tensor:
    """[max_position, rotary_dim]: cos(pos * inv_freq) | sin(pos * inv_freq)."""
    if inv_freq is None:
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    t = torch.arange(max_position, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(t, inv_freq.float())
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)


def rotary_launch(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                  is_neox: bool = True, launch: LaunchConfig = CUDA_LAUNCH) -> Launch:
    if q.dim() != 3 or k.dim() != 3:
        raise ValueError("rotary_embedding takes q [T, heads, D] and k [T, kv_heads, D]")
    rotary_dim = cos_sin_cache.shape[-1]
    if rotary_dim % 2 or rotary_dim > q.shape[-1] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"rotary_dim {rotary_dim} does not fit head_dim {q.shape[-1]}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos_sin_cache.stride(-1) != 1:
        raise ValueError("rotary_embedding needs the last dimension contiguous")
    half = rotary_dim // 2
    qh, kh = next_power_of_2(q.shape[1]), next_power_of_2(k.shape[1])
    half_pad = next_power_of_2(half)
    return Launch(
        kernel=rotary_kernel,
        grid=(q.shape[0],),
        args=dict(positions_ptr=positions, q_ptr=q, k_ptr=k, cos_sin_ptr=cos_sin_cache,
                  stride_q_t=q.stride(0), stride_q_h=q.stride(1), stride_k_t=k.stride(0),
                  stride_k_h=k.stride(1), stride_cs=cos_sin_cache.stride(0),
                  num_q_heads=q.shape[1], num_kv_heads=k.shape[1]),
        constexprs=dict(ROT_HALF=half, ROT_HALF_PAD=half_pad, Q_HEADS_PAD=qh, K_HEADS_PAD=kh,
                        IS_NEOX=bool(is_neox)),
        num_warps=launch.warps_for_elements(2 * max(qh, kh) * half_pad),
        num_stages=launch.num_stages,
    )


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
                     *, is_neox: bool = True, inplace: bool = False, launch: LaunchConfig = CUDA_LAUNCH):
    """Rotate q [T, heads, D] and k [T, kv_heads, D] by positions [T]; returns (q, k).

    With inplace=False (default) q and k are left alone and new tensors come back.
    """
    if not inplace:
        q, k = q.clone(), k.clone()
    rotary_launch(positions, q, k, cos_sin_cache, is_neox, launch).run()
    return q, k
