"""`TritonAttention`: the contract's AttentionBackend on the Triton kernels.

Per step, `build_metadata` moves the BatchLayout to the device once; per layer, `forward`
writes this step's K/V through the slot mapping and runs the unified paged attention kernel.
Nothing in `forward` reads device memory back to the host, so a decode step can be captured
in a CUDA graph (the worker then keeps the metadata tensors in static buffers and copies each
step's layout into them with `TritonMetadata.copy_`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from octavo.backend import AttentionBackend, AttentionSpec, BatchLayout
from octavo_cuda.kv_cache import kv_cache_shape, reshape_and_cache
from octavo_cuda.launch import CUDA_LAUNCH, LaunchConfig
from octavo_cuda.paged_attention import unified_attention


@dataclass(slots=True)
class TritonMetadata:
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_blocks] int32
    slot_mapping: torch.Tensor  # [T] int64; -1 for padding tokens
    num_seqs: int
    num_tokens: int
    max_query_len: int
    max_seq_len: int
    block_size: int

    def copy_(self, other: TritonMetadata) -> None:
        """Copy `other` into these (larger, static) buffers; pad the rest as empty requests.

        Used by CUDA-graph replay: padding requests get zero new tokens and zero context,
        padding tokens get slot -1, so the captured kernels skip them.
        """
        b, t, nb = other.num_seqs, other.num_tokens, other.block_tables.shape[1]
        self.query_start_loc[: b + 1].copy_(other.query_start_loc, non_blocking=True)
        self.query_start_loc[b + 1:].fill_(t)
        self.seq_lens[:b].copy_(other.seq_lens, non_blocking=True)
        self.seq_lens[b:].zero_()
        self.block_tables[:b, :nb].copy_(other.block_tables, non_blocking=True)
        self.slot_mapping[:t].copy_(other.slot_mapping, non_blocking=True)
        self.slot_mapping[t:].fill_(-1)


class TritonAttention(AttentionBackend):
    """Paged attention with Triton kernels; `launch` holds the vendor's launch parameters."""

    def __init__(self, launch: LaunchConfig = CUDA_LAUNCH) -> None:
        self.launch = launch

    def kv_cache_shape(self, num_blocks: int, block_size: int, num_kv_heads: int,
                       head_dim: int) -> tuple[int, ...]:
        return kv_cache_shape(num_blocks, block_size, num_kv_heads, head_dim)

    def build_metadata(self, layout: BatchLayout, device: torch.device) -> TritonMetadata:
        def dev(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            t = t.to(dtype)
            if t.device.type == "cpu" and torch.device(device).type != "cpu" and torch.accelerator.is_available():
                t = t.pin_memory()
            return t.to(device, non_blocking=True)

        return TritonMetadata(
            query_start_loc=dev(layout.query_start_loc, torch.int32),
            seq_lens=dev(layout.seq_lens, torch.int32),
            block_tables=dev(layout.block_tables, torch.int32),
            slot_mapping=dev(layout.slot_mapping, torch.int64),
            num_seqs=layout.num_reqs,
            num_tokens=int(layout.slot_mapping.shape[0]),
            max_query_len=layout.max_query_len,
            max_seq_len=layout.max_seq_len,
            block_size=layout.block_size,
        )

    def forward(self, spec: AttentionSpec, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_cache: torch.Tensor, metadata: TritonMetadata) -> torch.Tensor:
        if q.shape[1] != spec.num_heads or k.shape[1] != spec.num_kv_heads or q.shape[2] != spec.head_dim:
            raise ValueError(f"q {list(q.shape)} / k {list(k.shape)} do not match {spec}")
        key_cache, value_cache = kv_cache[0], kv_cache[1]
        if key_cache.shape[1] != metadata.block_size:
            raise ValueError(f"kv cache block size {key_cache.shape[1]} != batch block size {metadata.block_size}")
        reshape_and_cache(k, v, key_cache, value_cache, metadata.slot_mapping, self.launch)
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        unified_attention(out, q, key_cache, value_cache, metadata.block_tables, metadata.seq_lens,
                          metadata.query_start_loc, num_seqs=metadata.num_seqs, scale=spec.scale,
                          sliding_window=spec.sliding_window, softcap=spec.logit_softcap,
                          launch=self.launch)
        return out
