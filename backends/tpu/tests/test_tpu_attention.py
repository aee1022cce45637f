"""The static-shape ragged paged attention against torch-xla's own reference
(`ragged_paged_attention(..., use_kernel=False)`, the Pallas kernel's specification), and
the KV write through the slot mapping."""
import pytest
import torch

from octavo.backend import AttentionSpec, BatchLayout
from octavo_tpu.attention import XlaAttention, static_ragged_attention

PAGE = 16


def ragged_batch(seed: int, q_lens, contexts, *, heads=4, kv_heads=2, dim=16, num_reqs=8, width=6,
                 num_tokens=64, num_pages=64):
    """A padded step: len(q_lens) real requests (query tokens after `contexts` cached ones)
    among `num_reqs` rows, `num_tokens` query rows; pages drawn at random."""
    g = torch.Generator().manual_seed(seed)
    n = len(q_lens)
    kv_lens = torch.tensor([c + q for c, q in zip(contexts, q_lens)] + [0] * (num_reqs - n), dtype=torch.int32)
    pages = torch.randperm(num_pages, generator=g)[:num_reqs * width].view(num_reqs, width).to(torch.int32)
    cu = torch.zeros(num_reqs + 1, dtype=torch.int32)
    cu[1:n + 1] = torch.tensor(q_lens).cumsum(0)
    cu[n + 1:] = cu[n]
    q = torch.randn(num_tokens, heads, dim, generator=g)
    kv_pages = torch.randn(num_pages, PAGE, 2 * kv_heads, dim, generator=g)
    return q, kv_pages, kv_lens, pages, cu, torch.tensor([n], dtype=torch.int32)


CASES = {  # q_lens, contexts: decodes, prefills, prefill chunks after a cache hit, one long context
    "mixed": ([5, 1, 1, 17, 3], [0, 30, 7, 20, 60]),
    "decode": ([1] * 8, [3, 90, 15, 16, 0, 47, 80, 1]),
    "prefill": ([40, 23], [0, 0]),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("window,cap", [(None, None), (8, None), (20, None), (None, 5.0), (4, 30.0)])
def test_matches_torch_xla_reference(case, window, cap):
    pytest.importorskip("jax", reason="torch-xla's ragged_paged_attention needs jax (torch-xla[pallas])")
    from torch_xla.experimental.custom_kernel import ragged_paged_attention

    q_lens, contexts = CASES[case]
    args = ragged_batch(sum(map(len, CASES[case])), q_lens, contexts)
    kwargs = dict(sm_scale=16 ** -0.5, sliding_window=window, soft_cap=cap)
    want = ragged_paged_attention(*args, **kwargs, use_kernel=False)
    got = static_ragged_attention(*args, **kwargs)
    torch.testing.assert_close(got[:sum(q_lens)], want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()  # padding rows too


def test_gqa_eight_query_heads_per_kv_head():
    pytest.importorskip("jax")
    from torch_xla.experimental.custom_kernel import ragged_paged_attention

    args = ragged_batch(7, [3, 1, 9], [12, 40, 0], heads=8, kv_heads=1)
    want = ragged_paged_attention(*args, sm_scale=0.25, use_kernel=False)
    torch.testing.assert_close(static_ragged_attention(*args, sm_scale=0.25)[:13], want, rtol=1e-5, atol=1e-5)


def test_kv_written_through_the_slot_mapping_padding_to_the_reserved_page():
    num_blocks, kv_heads, dim = 6, 2, 16
    attn = XlaAttention(PAGE, use_kernel=False)
    cache = torch.zeros(attn.kv_cache_shape(num_blocks, PAGE, kv_heads, dim))
    assert cache.shape == ((num_blocks + 1) * PAGE, 2 * kv_heads, dim)
    pad_slot = num_blocks * PAGE
    # One request of 3 new tokens in block 4 at offsets 0..2, then 5 padding tokens.
    layout = BatchLayout(query_start_loc=torch.tensor([0, 3, 3], dtype=torch.int32),
                         seq_lens=torch.tensor([3, 0], dtype=torch.int32),
                         block_tables=torch.tensor([[4, 0], [0, 0]], dtype=torch.int32),
                         slot_mapping=torch.tensor([64, 65, 66] + [pad_slot] * 5),
                         max_query_len=3, max_seq_len=3, block_size=PAGE)
    q, k, v = (torch.randn(8, h, dim) for h in (4, kv_heads, kv_heads))
    out = attn.forward(AttentionSpec(4, kv_heads, dim, 0.25), q, k, v, cache, attn.build_metadata(layout, "cpu"))
    torch.testing.assert_close(cache[64:67, 0::2], k[:3])
    torch.testing.assert_close(cache[64:67, 1::2], v[:3])
    assert not cache[:64].any() and not cache[67:pad_slot].any(), "a real block was written"
    # Causal attention over the request's own tokens.
    scores = torch.einsum("qhd,khd->hqk", q[:3], k[:3].repeat_interleave(2, dim=1)) * 0.25
    scores = scores.masked_fill(torch.ones(3, 3).triu(1).bool(), float("-inf"))
    want = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v[:3].repeat_interleave(2, dim=1))
    torch.testing.assert_close(out[:3], want, rtol=1e-5, atol=1e-5)


def test_one_graph_for_every_layout_of_a_shape():
    """Different requests, lengths and pages at the same padded sizes compile once."""
    import torch_xla

    from octavo_tpu.graphs import num_compiles

    device = torch_xla.device()
    before = None
    for seed, (q_lens, contexts) in enumerate(CASES.values()):
        args = [a.to(device) for a in ragged_batch(seed, q_lens, contexts)]
        out = static_ragged_attention(*args, sm_scale=0.25, sliding_window=8)
        torch_xla.sync()
        want = static_ragged_attention(*ragged_batch(seed, q_lens, contexts), sm_scale=0.25, sliding_window=8)
        torch.testing.assert_close(out.cpu(), want, rtol=1e-5, atol=1e-5)
        before = num_compiles() if before is None else before
    assert num_compiles() == before
