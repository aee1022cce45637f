"""KV cache layout and the write of new K/V through the slot mapping (reshape_and_cache).

Layout of one layer's cache: [2, num_blocks, block_size, num_kv_heads, head_dim];
index 0 holds K, 1 holds V. A token with slot `s` goes to block `s // block_size`,
row `s % block_size`. Slot -1 marks a padding token (CUDA-graph padding): it is skipped.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_cuda.launch import CUDA_LAUNCH, Launch, LaunchConfig, next_power_of_2


def kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, ...]:
    return (2, num_blocks, block_size, num_kv_heads, head_dim)


@triton.jit
def reshape_and_cache_kernel(
    key_ptr, value_ptr,  # [T, KVH, D]
    key_cache_ptr, value_cache_ptr,  # [num_blocks, block_size, KVH, D]
    slot_mapping_ptr,  # [T] int64
    stride_k_t, stride_k_h,
    stride_v_t, stride_v_h,
    stride_c_b, stride_c_s, stride_c_h,  # K and V caches share strides
    num_kv_heads, head_dim,
    BLOCK_SIZE: tl.constexpr,
    HEADS_PAD: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    row = slot % BLOCK_SIZE

    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < head_dim)

    k = tl.load(key_ptr + token * stride_k_t + heads[:, None] * stride_k_h + dims[None, :], mask=mask)
    v = tl.load(value_ptr + token * stride_v_t + heads[:, None] * stride_v_h + dims[None, :], mask=mask)
    dst = block * stride_c_b + row * stride_c_s + heads[:, None] * stride_c_h + dims[None, :]
    tl.store(key_cache_ptr + dst, k.to(key_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(value_cache_ptr + dst, v.to(value_cache_ptr.dtype.element_ty), mask=mask)


def reshape_and_cache_launch(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                             value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                             launch: LaunchConfig = CUDA_LAUNCH) -> Launch:
    num_tokens, num_kv_heads, head_dim = key.shape
    num_blocks, block_size, cache_heads, cache_dim = key_cache.shape
    if (cache_heads, cache_dim) != (num_kv_heads, head_dim):
        raise ValueError(f"cache holds [{cache_heads}, {cache_dim}] per slot, got k of [{num_kv_heads}, {head_dim}]")
    if key.stride(-1) != 1 or value.stride(-1) != 1 or key_cache.stride(-1) != 1:
        raise ValueError("reshape_and_cache needs the head dimension contiguous")
    if key_cache.stride() != value_cache.stride():
        raise ValueError("key and value caches must share strides")
    if slot_mapping.shape[0] < num_tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries for {num_tokens} tokens")
    heads_pad = next_power_of_2(num_kv_heads)
    dim_pad = next_power_of_2(head_dim)
    return Launch(
        kernel=reshape_and_cache_kernel,
        grid=(num_tokens,),
        args=dict(
            key_ptr=key, value_ptr=value, key_cache_ptr=key_cache, value_cache_ptr=value_cache,
            slot_mapping_ptr=slot_mapping,
            stride_k_t=key.stride(0), stride_k_h=key.stride(1),
            stride_v_t=value.stride(0), stride_v_h=value.stride(1),
            stride_c_b=key_cache.stride(0), stride_c_s=key_cache.stride(1), stride_c_h=key_cache.stride(2),
            num_kv_heads=num_kv_heads, head_dim=head_dim,
        ),
        constexprs=dict(BLOCK_SIZE=block_size, HEADS_PAD=heads_pad, HEAD_DIM_PAD=dim_pad),
        num_warps=launch.warps_for_elements(heads_pad * dim_pad),
        num_stages=launch.num_stages,
    )


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                      launch: LaunchConfig = CUDA_LAUNCH) -> None:
    """Write key/value [T, kv_heads, D] into the caches [num_blocks, block_size, kv_heads, D].

    `slot_mapping` [T] (int64): block_id * block_size + offset; -1 skips the token.
    Values are cast to the cache dtype.
    """
    reshape_and_cache_launch(key, value, key_cache, value_cache, slot_mapping, launch).run()
