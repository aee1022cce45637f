"""Every Triton kernel against a plain-torch reference.

Runs under TRITON_INTERPRET=1 on the CPU (see the root conftest.py): fp32 and fp16; bf16 only on a GPU
(OCTAVO_TRITON_DEVICE=cuda) because the interpreter computes bf16 on the raw 16-bit integers.
Grids are kept small: the interpreter costs about 1 ms per program instance.
"""
import os

import pytest
import torch

pytest.importorskip("triton", reason="the octavo-cuda kernel tests need triton (pip install triton==3.7.1)")

from octavo_cuda.kv_cache import reshape_and_cache
from octavo_cuda.paged_attention import query_block_shape, unified_attention
from octavo_cuda.reference import (attention_ref, make_paged_batch, reshape_and_cache_ref, rms_norm_ref,
                                   rotary_ref)
from octavo_cuda.rms_norm import rms_norm
from octavo_cuda.rotary import build_cos_sin_cache, rotary_embedding

DEVICE = os.environ.get("OCTAVO_TRITON_DEVICE", "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def skip_bf16_in_interpreter(dtype):
    if dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip("bf16 under TRITON_INTERPRET is wrong (it computes on the raw 16-bit integers, "
                    "triton-lang/triton#11584); bf16 builds are covered by the compile-only tests and "
                    "run with OCTAVO_TRITON_DEVICE=cuda on a GPU")


def test_kernels_are_interpreted_here():
    if DEVICE != "cpu":
        pytest.skip(f"running compiled kernels on {DEVICE}")
    from octavo_cuda.paged_attention import unified_attention_kernel
    from triton.runtime.interpreter import InterpretedFunction

    assert isinstance(unified_attention_kernel, InterpretedFunction), (
        "octavo_cuda kernels were imported before TRITON_INTERPRET=1 was set")


# ----------------------------------------------------------------------------- KV write


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_reshape_and_cache(dtype, block_size):
    skip_bf16_in_interpreter(dtype)
    g = torch.Generator().manual_seed(1)
    T, kvh, d, nblocks = 11, 2, 40, 5  # head_dim 40: padded to 64 inside the kernel
    qkv = torch.randn(T, 4 + 2 * kvh, d, generator=g).to(dtype)
    k, v = qkv[:, 4:4 + kvh], qkv[:, 4 + kvh:]  # non-contiguous views, as after a fused qkv proj
    slots = torch.randperm(nblocks * block_size, generator=g)[:T]
    slots[[2, 7]] = -1  # padding tokens
    cache = torch.full((2, nblocks, block_size, kvh, d), float("nan"), dtype=dtype)
    expect = cache.clone()
    reshape_and_cache_ref(k, v, expect[0], expect[1], slots)
    cache = cache.to(DEVICE)
    reshape_and_cache(k.to(DEVICE), v.to(DEVICE), cache[0], cache[1], slots.to(DEVICE))
    torch.testing.assert_close(cache.cpu(), expect, atol=0, rtol=0, equal_nan=True)


def test_reshape_and_cache_casts_to_cache_dtype():
    g = torch.Generator().manual_seed(2)
    k, v = torch.randn(2, 5, 1, 64, generator=g)
    cache = torch.zeros(2, 2, 16, 1, 64, dtype=torch.float16)
    slots = torch.tensor([17, 3, -1, 30, 0])
    expect = cache.clone()
    reshape_and_cache_ref(k, v, expect[0], expect[1], slots)
    cache = cache.to(DEVICE)
    reshape_and_cache(k.to(DEVICE), v.to(DEVICE), cache[0], cache[1], slots.to(DEVICE))
    torch.testing.assert_close(cache.cpu(), expect, atol=0, rtol=0)


# ----------------------------------------------------------------------------- attention

# (context_len, query_len) per request, in no particular order.
SHAPES = {
    "prefill": [(0, 37), (0, 20)],
    "decode": [(0, 1), (16, 1), (47, 1), (31, 1)],
    "mixed": [(20, 13), (49, 1), (0, 9), (0, 1), (33, 2)],  # chunk after context, decodes, fresh prompt
}


def run_attention(requests, *, num_heads=4, num_kv_heads=2, head_dim=32, block_size=16, dtype=torch.float16,
                  kv_dtype=None, sliding_window=None, softcap=None, seed=0):
    b = make_paged_batch(requests, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                         block_size=block_size, dtype=dtype, kv_dtype=kv_dtype, seed=seed)
    kv = b.kv_cache.clone()
    reshape_and_cache_ref(b.k_new, b.v_new, kv[0], kv[1], b.slot_mapping)  # new K/V in place
    kv = kv.to(DEVICE)
    scale = head_dim ** -0.5
    out = torch.full_like(b.q, float("nan"), device=DEVICE)
    unified_attention(out, b.q.to(DEVICE), kv[0], kv[1], b.block_tables.to(DEVICE), b.seq_lens.to(DEVICE),
                      b.query_start_loc.to(DEVICE), num_seqs=len(requests), scale=scale,
                      sliding_window=sliding_window, softcap=softcap)
    ref = attention_ref(b.q, b.keys, b.values, b.query_lens, scale, sliding_window, softcap)
    return out.cpu(), ref


def assert_attention_close(out, ref, dtype):
    tol = TOL[dtype]
    assert not out.isnan().any(), "attention read unwritten (NaN) cache memory or left rows unwritten"
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention_shapes(shape, dtype, block_size):
    skip_bf16_in_interpreter(dtype)
    out, ref = run_attention(SHAPES[shape], block_size=block_size, dtype=dtype)
    assert_attention_close(out, ref, dtype)


@pytest.mark.parametrize("heads", [(2, 2), (6, 2), (8, 1), (32, 1)],
                         ids=["mha", "gqa3", "gqa8", "gqa32"])
def test_attention_gqa(heads):
    num_heads, num_kv_heads = heads
    requests = SHAPES["mixed"] if num_heads < 32 else [(12, 3), (30, 1)]  # 32 heads/kv: 1 query per program
    out, ref = run_attention(requests, num_heads=num_heads, num_kv_heads=num_kv_heads)
    assert_attention_close(out, ref, torch.float16)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("window", [1, 8, 40])
def test_attention_sliding_window(window, block_size):
    # window 8 < block: whole tiles are skipped; 40 spans blocks; 1 sees only itself.
    out, ref = run_attention(SHAPES["mixed"], block_size=block_size, sliding_window=window, dtype=torch.float32)
    assert_attention_close(out, ref, torch.float32)


@pytest.mark.parametrize("window", [None, 16])
def test_attention_softcap(window):
    out, ref = run_attention(SHAPES["mixed"], softcap=5.0, sliding_window=window, dtype=torch.float32, seed=3)
    assert_attention_close(out, ref, torch.float32)


def test_attention_head_dim_not_power_of_two():
    out, ref = run_attention(SHAPES["mixed"], head_dim=40, dtype=torch.float16)
    assert_attention_close(out, ref, torch.float16)


@pytest.mark.parametrize("kv_dtype", [torch.float16, torch.float32])
def test_attention_kv_dtype_differs_from_query(kv_dtype):
    q_dtype = torch.float32 if kv_dtype == torch.float16 else torch.float16
    out, ref = run_attention(SHAPES["mixed"], dtype=q_dtype, kv_dtype=kv_dtype)
    assert_attention_close(out, ref, torch.float16)


def test_query_block_shape():
    assert query_block_shape(1) == (16, 16)
    assert query_block_shape(3) == (16, 5)
    assert query_block_shape(16) == (16, 1)
    assert query_block_shape(20) == (32, 1)


# ----------------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rms_norm(dtype, with_residual, gemma):
    skip_bf16_in_interpreter(dtype)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 96, generator=g).to(dtype)  # 96: masked tail of a 128 block
    w = (torch.randn(96, generator=g) * 0.1 + (0.0 if gemma else 1.0)).to(dtype)
    r = torch.randn(2, 3, 96, generator=g).to(dtype) if with_residual else None
    out = rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-6, None if r is None else r.to(DEVICE), gemma=gemma)
    ref = rms_norm_ref(x, w, 1e-6, r, gemma=gemma)
    tol = TOL[dtype]
    if with_residual:
        torch.testing.assert_close(out[1].cpu(), ref[1], atol=0, rtol=0)  # same rounding as HF
        out, ref = out[0], ref[0]
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.cpu(), ref, atol=tol, rtol=tol)


def test_rms_norm_strided_rows():
    x = torch.randn(4, 128)[:, :64]  # row stride 128
    w = torch.randn(64)
    torch.testing.assert_close(rms_norm(x.to(DEVICE), w.to(DEVICE), 1e-5).cpu(), rms_norm_ref(x, w, 1e-5))


# ----------------------------------------------------------------------------- rotary


@pytest.mark.parametrize("rotary_dim", [64, 32], ids=["full", "partial"])
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rotary(dtype, is_neox, rotary_dim):
    skip_bf16_in_interpreter(dtype)
    g = torch.Generator().manual_seed(5)
    T, d = 6, 64
    qkv = torch.randn(T, 4 + 2 + 2, d, generator=g).to(dtype)
    q, k = qkv[:, :4], qkv[:, 4:6]  # strided views
    positions = torch.tensor([0, 1, 7, 100, 33, 5])
    cache = build_cos_sin_cache(rotary_dim, 128, base=10000.0)
    q_ref, k_ref = rotary_ref(positions, q, k, cache, is_neox)
    q_out, k_out = rotary_embedding(positions.to(DEVICE), q.to(DEVICE), k.to(DEVICE), cache.to(DEVICE),
                                    is_neox=is_neox)
    tol = TOL[dtype]
    torch.testing.assert_close(q_out.cpu(), q_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(k_out.cpu(), k_ref, atol=tol, rtol=tol)


def test_rotary_matches_hf_rotate_half_and_inplace():
    # HF Llama: q * cos + rotate_half(q) * sin with cos = cat(freqs, freqs).cos()
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(3, 2, 16, generator=g), torch.randn(3, 1, 16, generator=g)
    positions = torch.tensor([4, 0, 9])
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
    emb = torch.cat([positions[:, None].float() * inv_freq] * 2, -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]

    def rotate_half(x):
        return torch.cat([-x[..., 8:], x[..., :8]], -1)

    q_hf, k_hf = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    qd, kd = q.to(DEVICE), k.to(DEVICE)
    rotary_embedding(positions.to(DEVICE), qd, kd, build_cos_sin_cache(16, 16).to(DEVICE), inplace=True)
    torch.testing.assert_close(qd.cpu(), q_hf, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kd.cpu(), k_hf, atol=1e-5, rtol=1e-5)
