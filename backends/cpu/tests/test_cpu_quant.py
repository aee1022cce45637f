"""The quantized-weight kernels against the `gguf` package's dequantization (the reference),
on every ISA this CPU runs (AVX-512 VNNI where present, and the AVX2 floor)."""
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from octavo.backend import QuantizedTensor
from octavo_cpu.kernels import bf16_panels, quantized
from octavo_cpu.quant import GGML_TYPES, QuantLinear

pytestmark = pytest.mark.skipif(quantized() is None, reason="the quantized kernels need x86-64 with AVX2 and a build")

# Byte offsets of each format's fp16 scale/min fields inside a block: random bytes there
# could be inf or NaN, so the tests write sane values.
HALF_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
               "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}
# Every target this CPU runs: the AVX2 floor and, where present, AVX-512 VNNI.
ISAS = [] if quantized() is None else ["avx2"] + (["avx512_vnni"] if quantized().quant_isa() == "avx512_vnni" else [])


def random_blocks(qtype: str, rows: int, cols: int, seed: int = 0) -> QuantizedTensor:
    """Random quantized values with small random scales, in the format's bytes."""
    rng = np.random.default_rng(seed)
    weights, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    raw = rng.integers(0, 256, size=(rows, cols // weights, size), dtype=np.uint8)
    for offset in HALF_FIELDS[qtype]:
        halves = (rng.standard_normal((rows, cols // weights)) * 0.01).astype(np.float16)
        raw[:, :, offset:offset + 2] = halves.view(np.uint8).reshape(rows, cols // weights, 2)
    return QuantizedTensor(qtype, torch.from_numpy(raw.reshape(rows, -1)), (rows, cols))


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernels multiply: x rounded per 32 values to int8 times amax / 127."""
    blocks = x.double().reshape(x.shape[0], -1, 32)
    scale = blocks.abs().amax(-1, keepdim=True).float().double() / 127
    q = torch.round(blocks / torch.where(scale == 0, 1, scale))
    return (q * scale).reshape(x.shape)


@pytest.fixture(params=ISAS)
def isa(request):
    kernels = quantized()
    kernels.set_quant_isa(request.param)
    yield request.param
    kernels.set_quant_isa("auto")


@pytest.mark.parametrize("qtype", sorted(GGML_TYPES))
def test_dequantize_matches_gguf(isa, qtype):
    w = random_blocks(qtype, 40, 512)
    ours = quantized().quant_dequantize(w.data, GGML_TYPES[qtype], 512, torch.float32)
    torch.testing.assert_close(ours, w.dequantize(torch.float32), rtol=0, atol=0)


@pytest.mark.parametrize("qtype", sorted(GGML_TYPES))
@pytest.mark.parametrize("rows", [1, 3, 6, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_matches_dequantized_matmul(isa, qtype, rows, dtype):
    N, K = 37, 512  # an odd N: the kernels take two weight rows at a time
    w = random_blocks(qtype, N, K, seed=rows)
    dense = torch.from_numpy(dequantize(w.data.numpy(), GGMLQuantizationType[qtype])).double()
    x = torch.randn(rows, K, generator=torch.Generator().manual_seed(rows)).to(dtype)
    out = torch.empty(rows, N + 5, dtype=dtype)[:, 2:2 + N]  # a strided column slice, as merged linears write
    quantized().quant_linear_out(x, w.data, GGML_TYPES[qtype], out)
    # exact up to fp32 summation against the same int8 rounding of x ...
    same_inputs = quantize_activations(x.float()) @ dense.T
    tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(out.double(), same_inputs, rtol=tol, atol=tol * same_inputs.abs().max().item())
    # ... and within the int8 rounding's error of the dequantize-then-matmul reference
    reference = x.double() @ dense.T
    assert (out.double() - reference).norm() / reference.norm() < 0.02


def test_isa_selection_refuses_what_the_cpu_lacks():
    kernels = quantized()
    with pytest.raises(RuntimeError, match="unknown ISA"):
        kernels.set_quant_isa("sse2")
    if "avx512_vnni" not in ISAS:
        with pytest.raises(RuntimeError, match="cannot run"):
            kernels.set_quant_isa("avx512_vnni")
    kernels.set_quant_isa("auto")
    assert kernels.quant_isa() in ISAS


# Rows of bf16: the integer kernels below 16; from 16 on, parts of whole 16-row panels go
# through bf16 panels where the CPU has AVX512-BF16 (no AMX), else from 64 on they dequantize
# for oneDNN (csrc/linear.cpp); a part of 8 rows always takes the integer kernel.
@pytest.mark.parametrize("rows", [6, 16, 64])
def test_quant_linear_mixes_types_dense_parts_and_bias(rows):
    """A Q4_K_M file's merged q/k/v can mix types; a part of a type without a kernel is dense."""
    K = 256
    parts = [random_blocks("Q5_0", 32, K, 1), random_blocks("Q8_0", 16, K, 2), random_blocks("Q6_K", 8, K, 3),
             torch.randn(8, K).bfloat16()]
    bias = torch.randn(64).bfloat16()
    layer = QuantLinear(parts, bias, quantized())
    x = torch.randn(rows, 1, K).bfloat16()
    dense = torch.cat([p.dequantize(torch.float32) if isinstance(p, QuantizedTensor) else p.float() for p in parts])
    expected = x.reshape(-1, K).double() @ dense.double().T + bias.double()
    out = layer(x)
    assert out.shape == (rows, 1, 64) and out.dtype == torch.bfloat16
    assert (out.reshape(-1, 64).double() - expected).norm() / expected.norm() < 0.02


@pytest.mark.skipif(bf16_panels() is None, reason="bf16 panels run where the CPU has AVX512-BF16 and no AMX")
@pytest.mark.parametrize("qtype", list(HALF_FIELDS))
def test_quantized_panels_match_the_dequantized_weight(qtype):
    """Each format dequantized into panels: bf16 rounding of the weights only (no int8 activations)."""
    w = random_blocks(qtype, 48, 512, 7)
    x = torch.randn(20, 512).bfloat16()
    out = torch.empty(20, 48, dtype=torch.bfloat16)
    quantized().quant_panels_linear_out(x, w.data, GGML_TYPES[qtype], out)
    expected = x.double() @ w.dequantize(torch.float32).double().T
    assert (out.double() - expected).norm() / expected.norm() < 0.01


def test_kernel_refuses_bad_shapes():
    kernels = quantized()
    w = random_blocks("Q4_K", 4, 256)
    with pytest.raises(RuntimeError, match="whole number of blocks"):
        kernels.quant_linear_out(torch.randn(1, 128), w.data, GGML_TYPES["Q4_K"], torch.empty(1, 4))
    with pytest.raises(RuntimeError, match="no CPU kernel"):
        kernels.quant_linear_out(torch.randn(1, 256), w.data, 10, torch.empty(1, 4))
