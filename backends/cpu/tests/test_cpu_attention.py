"""The CPU backend's attention paths agree with a dense reference on ragged paged batches."""
import pytest
import torch

from octavo.backend import AttentionSpec, BatchLayout
from octavo_cpu.attention import TorchPagedAttention
from octavo_cpu.kernels import avx512


def dense_reference(spec, q_rows, keys, values, positions):
    """Each query row attends to keys [0, pos] (within the window) of its own sequence."""
    out = []
    group = spec.num_heads // spec.num_kv_heads
    for q, k, v, pos in zip(q_rows, keys, values, positions):
        k = k[: pos + 1].float().repeat_interleave(group, dim=1)  # [L, H, D]
        v = v[: pos + 1].float().repeat_interleave(group, dim=1)
        scores = torch.einsum("hd,lhd->hl", q.float(), k) * spec.scale
        if spec.logit_softcap:
            scores = torch.tanh(scores / spec.logit_softcap) * spec.logit_softcap
        if spec.sliding_window:
            scores[:, : max(0, pos + 1 - spec.sliding_window)] = float("-inf")
        out.append(torch.einsum("hl,lhd->hd", scores.softmax(-1), v))
    return torch.stack(out)


def paged_batch(query_lens, seq_lens, spec, block_size, dtype, gen):
    """Random K/V per sequence, written to shuffled blocks through the attention backend."""
    num_blocks = sum(-(-s // block_size) for s in seq_lens) + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    tables, slots, keys, values = [], [], [], []
    for s in seq_lens:
        blocks = [perm.pop() for _ in range(-(-s // block_size))]
        tables.append(blocks)
        keys.append(torch.randn(s, spec.num_kv_heads, spec.head_dim, generator=gen).to(dtype))
        values.append(torch.randn(s, spec.num_kv_heads, spec.head_dim, generator=gen).to(dtype))
    width = max(len(t) for t in tables)
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    for t, s, n in zip(tables, seq_lens, query_lens):
        slots += [t[p // block_size] * block_size + p % block_size for p in range(s - n, s)]
    layout = BatchLayout(
        query_start_loc=torch.tensor(cu, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.long),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens), block_size=block_size)
    return layout, tables, keys, values, num_blocks


def make_backend(use_native: bool) -> TorchPagedAttention:
    if use_native and avx512() is None:
        pytest.skip("no AVX-512 or no C++ toolchain here: the torch path is what runs")
    return TorchPagedAttention(avx512() if use_native else None)


def write_context(backend, spec, cache, tables, keys, values):
    """Each sequence's K/V at its positions, through the backend (so in its layout)."""
    block_size = cache.shape[-1] // spec.head_dim
    amx = backend.uses_amx(spec, cache)
    for t, k, v in zip(tables, keys, values):
        positions = torch.arange(k.shape[0])
        slots = torch.tensor(t)[positions // block_size] * block_size + positions % block_size
        backend.write(*backend.block_views(cache, spec.head_dim, amx), slots, k, v, amx)


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("shape", [(6, 2, 16, 4), (9, 3, 64, 16), (4, 1, 40, 32), (8, 2, 128, 32), (16, 1, 32, 16)],
                         ids=lambda s: "h{}-kv{}-d{}-bs{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window,softcap", [(None, None), (7, None), (None, 30.0)])
@pytest.mark.parametrize("query_lens,seq_lens", [
    ([1, 1, 1], [5, 40, 17]),  # decode only
    ([9, 20], [9, 33]),  # prefill: fresh, and a chunk after context
    ([1, 12, 1, 5], [30, 12, 1, 50]),  # mixed, decodes not leading
])
def test_attention_matches_dense_reference(use_native, dtype, window, softcap, query_lens, seq_lens, shape):
    heads, kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(0)
    spec = AttentionSpec(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, scale=0.3,
                         sliding_window=window, logit_softcap=softcap)
    layout, tables, keys, values, num_blocks = paged_batch(query_lens, seq_lens, spec, block_size, dtype, gen)
    backend = make_backend(use_native)
    cache = torch.zeros(backend.kv_cache_shape(num_blocks, block_size, kv_heads, head_dim), dtype=dtype)
    write_context(backend, spec, cache, tables, keys, values)  # earlier context is already there
    new = lambda xs: torch.cat([x[s - n:] for x, s, n in zip(xs, seq_lens, query_lens)])  # noqa: E731
    q = torch.randn(sum(query_lens), heads, head_dim, generator=gen).to(dtype)
    qkv = torch.cat([q, new(keys), new(values)], dim=1)  # q, k, v as the model has them: views of one buffer
    q_view, k_view, v_view = qkv.split([heads, kv_heads, kv_heads], dim=1)
    out = backend.forward(spec, q_view, k_view, v_view, cache, backend.build_metadata(layout, torch.device("cpu")))
    positions = [p for s, n in zip(seq_lens, query_lens) for p in range(s - n, s)]
    owner = [i for i, n in enumerate(query_lens) for _ in range(n)]
    expected = dense_reference(spec, q, [keys[i] for i in owner], [values[i] for i in owner], positions)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)


def test_bf16_takes_the_amx_layout_where_the_cpu_has_amx():
    """On an AMX machine the bf16 cases above run the tile kernel, not the AVX-512 one."""
    if avx512() is None or not avx512().amx_available():
        pytest.skip("no AMX here: bf16 runs the AVX-512 kernel")
    backend = TorchPagedAttention(avx512())
    cache = torch.zeros(backend.kv_cache_shape(4, 16, 3, 64), dtype=torch.bfloat16)
    assert backend.uses_amx(AttentionSpec(9, 3, 64, scale=0.125), cache)
    assert not backend.uses_amx(AttentionSpec(9, 3, 64, scale=0.125), cache.float())
    assert not backend.uses_amx(AttentionSpec(6, 2, 16, scale=0.25), torch.zeros(backend.kv_cache_shape(4, 4, 2, 16)))


@pytest.mark.parametrize("use_native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stale_nan_beyond_a_sequence_does_not_leak_into_it(use_native, dtype):
    """A freed block keeps what its last owner wrote (even NaN); the next owner's unwritten
    slots must not reach its attention."""
    spec = AttentionSpec(num_heads=9, num_kv_heads=3, head_dim=64, scale=0.125)
    gen = torch.Generator().manual_seed(1)
    layout, tables, keys, values, num_blocks = paged_batch([1, 1], [5, 21], spec, 16, dtype, gen)
    backend = make_backend(use_native)
    cache = torch.full(backend.kv_cache_shape(num_blocks, 16, 3, 64), float("nan"), dtype=dtype)
    write_context(backend, spec, cache, tables, keys, values)
    q = torch.randn(2, 9, 64).to(dtype)
    last = lambda xs: torch.stack([x[-1] for x in xs])  # noqa: E731 - each sequence's new token
    out = backend.forward(spec, q, last(keys), last(values), cache, backend.build_metadata(layout, torch.device("cpu")))
    assert not out.isnan().any()
