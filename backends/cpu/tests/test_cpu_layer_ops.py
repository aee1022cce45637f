"""The fused bf16 layer ops agree with the plain-torch LayerOps they replace."""
import pytest
import torch

from octavo.models.ops import LayerOps
from octavo_cpu.kernels import avx512

pytestmark = pytest.mark.skipif(avx512() is None, reason="no AVX-512 or no C++ toolchain: the torch ops run")


@pytest.fixture
def ops():
    from octavo_cpu.layer_ops import CpuLayerOps

    return CpuLayerOps(avx512())


def _close(got, expected):
    """Equal up to one bf16 rounding step where fp32 sums differ in order."""
    torch.testing.assert_close(got.float(), expected.float(), rtol=8e-3, atol=1e-2)


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)


@pytest.mark.parametrize("gemma", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("rows,dim", [(1, 576), (37, 40), (5, 17)])
def test_rms_norm(ops, gemma, with_residual, rows, dim):
    x, weight, residual = _randn(rows, dim, seed=1), _randn(dim, seed=2), _randn(rows, dim, seed=3) * 4
    got = ops.rms_norm(x.clone(), weight, 1e-6, residual.clone() if with_residual else None, gemma)
    expected = LayerOps().rms_norm(x.clone(), weight, 1e-6, residual.clone() if with_residual else None, gemma)
    if with_residual:
        _close(got[0], expected[0])
        assert torch.equal(got[1], expected[1])  # the new residual: one bf16 add either way
    else:
        _close(got, expected)


@pytest.mark.parametrize("tokens,dim", [(1, 256), (9, 40), (3, 17)])
def test_silu_and_mul(ops, tokens, dim):
    gate_up = _randn(tokens, 2 * dim, seed=4) * 3
    _close(ops.act_and_mul(gate_up.clone(), "silu"), LayerOps().act_and_mul(gate_up.clone(), "silu"))


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 2, 40), (2, 1, 34)])
def test_rope_on_views_of_the_fused_qkv_output(ops, heads, kv_heads, head_dim):
    tokens = 7
    qkv = _randn(tokens, (heads + 2 * kv_heads) * head_dim, seed=5)
    q, k, _ = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q, k = q.view(tokens, heads, head_dim), k.view(tokens, kv_heads, head_dim)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.arange(100).float()[:, None] * inv_freq[None]
    table = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
    positions = torch.tensor([0, 3, 4, 50, 99, 7, 12])
    ref_q, ref_k = LayerOps().rope(LayerOps().rope_rows(table, positions, torch.bfloat16), q.clone(), k.clone())
    got_q, got_k = ops.rope(ops.rope_rows(table, positions, torch.bfloat16), q, k)
    assert torch.equal(got_q, ref_q) and torch.equal(got_k, ref_k)  # the same roundings, elementwise


def test_other_dtypes_and_activations_use_the_torch_ops(ops):
    x = torch.randn(4, 32)
    weight = torch.randn(32)
    assert torch.equal(ops.rms_norm(x.clone(), weight, 1e-6), LayerOps().rms_norm(x.clone(), weight, 1e-6))
    gate_up = _randn(3, 64, seed=6)
    _close(ops.act_and_mul(gate_up.clone(), "gelu_pytorch_tanh"), LayerOps().act_and_mul(gate_up, "gelu_pytorch_tanh"))
