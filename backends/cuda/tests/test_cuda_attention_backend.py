"""TritonAttention through the contract: BatchLayout in, K/V written, attention out.

Interpreted on the CPU (the root conftest.py). Covers padding tokens (slot -1, as in a CUDA-graph
padded batch) and TritonMetadata.copy_ into larger static buffers (graph replay).
"""
import os

import pytest
import torch

pytest.importorskip("triton", reason="these tests run Triton kernels: pip install triton==3.7.1")

from octavo.backend import AttentionSpec, BatchLayout
from octavo_cuda.attention import TritonAttention, TritonMetadata
from octavo_cuda.reference import attention_ref, make_paged_batch, reshape_and_cache_ref

DEVICE = torch.device(os.environ.get("OCTAVO_TRITON_DEVICE", "cpu"))
REQUESTS = [(20, 13), (49, 1), (0, 9), (0, 1)]


def layout_of(b, pad_tokens=0) -> BatchLayout:
    slots = torch.cat([b.slot_mapping, torch.full((pad_tokens,), -1, dtype=torch.int64)])
    return BatchLayout(query_start_loc=b.query_start_loc, seq_lens=b.seq_lens, block_tables=b.block_tables,
                       slot_mapping=slots, max_query_len=max(b.query_lens), max_seq_len=int(b.seq_lens.max()),
                       block_size=b.block_size)


def padded(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([t, torch.randn(n, *t.shape[1:]).to(t.dtype)])


@pytest.mark.parametrize("block_size,window", [(16, None), (32, 24)])
def test_forward_writes_cache_and_attends(block_size, window):
    h, kvh, d, pad = 4, 2, 32, 3
    b = make_paged_batch(REQUESTS, num_heads=h, num_kv_heads=kvh, head_dim=d, block_size=block_size,
                         dtype=torch.float16, seed=7)
    backend = TritonAttention()
    assert backend.kv_cache_shape(b.kv_cache.shape[1], block_size, kvh, d) == tuple(b.kv_cache.shape)
    spec = AttentionSpec(num_heads=h, num_kv_heads=kvh, head_dim=d, scale=d ** -0.5, sliding_window=window)
    md = backend.build_metadata(layout_of(b, pad), DEVICE)
    assert isinstance(md, TritonMetadata) and md.num_seqs == len(REQUESTS) and md.slot_mapping.dtype == torch.int64

    expect_cache = b.kv_cache.clone()
    reshape_and_cache_ref(b.k_new, b.v_new, expect_cache[0], expect_cache[1], b.slot_mapping)
    kv = b.kv_cache.to(DEVICE)
    out = backend.forward(spec, padded(b.q, pad).to(DEVICE), padded(b.k_new, pad).to(DEVICE),
                          padded(b.v_new, pad).to(DEVICE), kv, md)
    assert out.shape == (b.q.shape[0] + pad, h, d)
    torch.testing.assert_close(kv.cpu(), expect_cache, atol=0, rtol=0, equal_nan=True)  # padding not written
    ref = attention_ref(b.q, b.keys, b.values, b.query_lens, spec.scale, window)
    torch.testing.assert_close(out[: b.q.shape[0]].cpu().double(), ref, atol=2e-3, rtol=2e-3)


def test_static_metadata_copy_for_graph_replay():
    """A decode batch copied into larger static buffers gives the same result (padding is inert)."""
    h, kvh, d = 4, 4, 32
    decodes = [(5, 1), (40, 1), (17, 1)]
    b = make_paged_batch(decodes, num_heads=h, num_kv_heads=kvh, head_dim=d, block_size=16,
                         dtype=torch.float32, seed=8)
    backend = TritonAttention()
    spec = AttentionSpec(num_heads=h, num_kv_heads=kvh, head_dim=d, scale=d ** -0.5)
    md = backend.build_metadata(layout_of(b), DEVICE)
    graph_bs, graph_blocks = 8, 6  # captured size: 8 requests of 1 token
    static = TritonMetadata(
        query_start_loc=torch.zeros(graph_bs + 1, dtype=torch.int32, device=DEVICE),
        seq_lens=torch.zeros(graph_bs, dtype=torch.int32, device=DEVICE),
        block_tables=torch.zeros(graph_bs, graph_blocks, dtype=torch.int32, device=DEVICE),
        slot_mapping=torch.zeros(graph_bs, dtype=torch.int64, device=DEVICE),
        num_seqs=graph_bs, num_tokens=graph_bs, max_query_len=1, max_seq_len=16 * graph_blocks, block_size=16)
    static.copy_(md)
    assert static.query_start_loc.tolist() == [0, 1, 2, 3, 3, 3, 3, 3, 3]
    assert static.slot_mapping[3:].tolist() == [-1] * 5
    kv = b.kv_cache.to(DEVICE)
    pad = graph_bs - len(decodes)
    out = backend.forward(spec, padded(b.q, pad).to(DEVICE), padded(b.k_new, pad).to(DEVICE),
                          padded(b.v_new, pad).to(DEVICE), kv, static)
    ref = attention_ref(b.q, b.keys, b.values, b.query_lens, spec.scale)
    torch.testing.assert_close(out[: len(decodes)].cpu().double(), ref, atol=2e-5, rtol=2e-5)


def test_forward_rejects_mismatched_spec():
    b = make_paged_batch([(0, 2)], num_heads=2, num_kv_heads=1, head_dim=16, block_size=16, dtype=torch.float32)
    backend = TritonAttention()
    md = backend.build_metadata(layout_of(b), DEVICE)
    spec = AttentionSpec(num_heads=4, num_kv_heads=1, head_dim=16, scale=0.25)
    with pytest.raises(ValueError, match="do not match"):
        backend.forward(spec, b.q, b.k_new, b.v_new, b.kv_cache, md)
