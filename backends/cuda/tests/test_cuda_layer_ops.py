"""TritonLayerOps against the core's torch LayerOps, on the tensors the models hand them.

Interpreted on the CPU in fp32/fp16 (the root conftest.py); with OCTAVO_TRITON_DEVICE=cuda
compiled on the GPU, bf16 included. The default ops are HF's math, so agreeing with them is
agreeing with HF (test_cuda_engine.py checks whole models token for token).
"""
import os

import pytest
import torch

pytest.importorskip("triton", reason="these tests run Triton kernels: pip install triton==3.7.1")

from octavo.models.layers import RotaryEmbedding, rope_inv_freq
from octavo.models.ops import LayerOps
from octavo.testing.tiny_models import tiny_config
from octavo_cuda import CudaBackend
from octavo_cuda.launch import CUDA_LAUNCH
from octavo_cuda.layer_ops import TritonLayerOps

DEVICE = os.environ.get("OCTAVO_TRITON_DEVICE", "cpu")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
TORCH, TRITON = LayerOps(), TritonLayerOps()


@pytest.fixture(params=DTYPES, ids=DTYPE_IDS)
def dtype(request):
    if request.param == torch.bfloat16 and INTERPRETED:
        pytest.skip("the Triton interpreter computes bf16 wrong (triton-lang/triton#11584)")
    return request.param


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, exact: bool = False) -> None:
    tol = 0 if exact else TOL[dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=tol, rtol=tol)


def test_backend_hands_out_triton_ops():
    ops = CudaBackend().layer_ops()
    assert type(ops) is TritonLayerOps and ops.launch is CUDA_LAUNCH


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rms_norm(dtype, gemma):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 96, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(96, generator=g) * 0.1 + (0.0 if gemma else 1.0)).to(dtype).to(DEVICE)
    close(TRITON.rms_norm(x, w, 1e-6, gemma=gemma), TORCH.rms_norm(x, w, 1e-6, gemma=gemma), dtype)


@pytest.mark.parametrize("gemma", [False, True], ids=["llama", "gemma"])
def test_rms_norm_with_residual(dtype, gemma):
    """The new residual is the sum rounded as HF rounds it; the torch ops may overwrite inputs."""
    g = torch.Generator().manual_seed(1)
    x, residual = torch.randn(2, 5, 96, generator=g).to(dtype).to(DEVICE)
    w = torch.randn(96, generator=g).to(dtype).to(DEVICE)
    out, new_residual = TRITON.rms_norm(x, w, 1e-5, residual, gemma)
    want_out, want_residual = TORCH.rms_norm(x.clone(), w, 1e-5, residual.clone(), gemma)
    close(new_residual, want_residual, dtype, exact=True)
    close(out, want_out, dtype)


def test_rms_norm_per_head_views(dtype):
    """Qwen3 / Gemma 3 q/k norms: [T, heads, D] views into the fused qkv projection."""
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(3, (4 + 2 + 2) * 16, generator=g).to(dtype).to(DEVICE)
    q = qkv[:, :64].view(3, 4, 16)
    w = torch.randn(16, generator=g).to(dtype).to(DEVICE)
    close(TRITON.rms_norm(q, w, 1e-6, gemma=True), TORCH.rms_norm(q, w, 1e-6, gemma=True), dtype)


ROPE_SCALING = {
    "default": None,
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128},  # scaling 1.14
}


@pytest.mark.parametrize("rope_scaling", ROPE_SCALING.values(), ids=ROPE_SCALING.keys())
def test_rope_on_the_core_table(dtype, rope_scaling):
    """Both ops on one `RotaryEmbedding` table (scaled ropes fold into it), with q/k as views
    of a qkv projection."""
    overrides = {"rope_scaling": rope_scaling} if rope_scaling else {}
    config = tiny_config("llama", **overrides)
    inv_freq, scaling = rope_inv_freq(config, 16)
    with torch.device(DEVICE):
        rotary_torch = RotaryEmbedding(inv_freq, scaling, 512, TORCH)
        rotary_triton = RotaryEmbedding(inv_freq, scaling, 512, TRITON)
    g = torch.Generator().manual_seed(3)
    positions = torch.tensor([0, 1, 7, 300, 33, 511]).to(DEVICE)
    qkv = torch.randn(6, 4 + 2 + 2, 16, generator=g).to(dtype).to(DEVICE)
    want = TORCH.rope(rotary_torch(positions, dtype), qkv[:, :4], qkv[:, 4:6])
    v = qkv[:, 6:].clone()
    got = TRITON.rope(rotary_triton(positions, dtype), qkv[:, :4], qkv[:, 4:6])
    for g_, w_ in zip(got, want):
        # The kernel rounds once from fp32; the torch ops round after each op, as HF does.
        close(g_, w_, dtype)
    assert got[0].data_ptr() == qkv.data_ptr(), "rotated in place"
    torch.testing.assert_close(qkv[:, 6:], v, atol=0, rtol=0)  # v untouched
