"""Pre-packed linears give F.linear's results, and only the low-precision layers this CPU can
pack are packed (fp16 packing needs AVX512-FP16 or AVX-NE-CONVERT: not on AMD Zen 4); bf16
weights go into our panels where the CPU has AVX512-BF16 and no AMX, oneDNN's layout elsewhere."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from octavo_cpu import linear as linear_module
from octavo_cpu.kernels import bf16_panels
from octavo_cpu.linear import PackedLinear, PanelLinear, pack_linears, packable_dtypes

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_linear_matches_f_linear(rows, bias, dtype):
    if dtype not in packable_dtypes():
        pytest.skip(f"this CPU's oneDNN cannot pack {dtype} (see test_unpackable_dtypes_keep_f_linear)")
    gen = torch.Generator().manual_seed(rows)
    linear = nn.Linear(96, 160, bias=bias, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(160, 96, generator=gen))
        if bias:
            linear.bias.copy_(torch.randn(160, generator=gen))
    x = torch.randn(rows, 96, generator=gen).to(dtype)
    expected = F.linear(x.float(), linear.weight.float(), None if linear.bias is None else linear.bias.float())
    got = PackedLinear(linear, batch_size=64)(x)
    assert got.dtype == dtype and got.shape == (rows, 160)
    torch.testing.assert_close(got.float(), expected, rtol=1.6e-2, atol=1e-1)


def _mixed_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 8, dtype=torch.bfloat16), nn.Sequential(nn.Linear(8, 4, dtype=torch.float16)),
                         nn.Linear(4, 4))


@pytest.mark.parametrize("cpu_packs", [(torch.bfloat16, torch.float16), (torch.bfloat16,), ()],
                         ids=["bf16+fp16", "bf16 only (AMD Zen 4)", "none"])
def test_pack_linears_swaps_packable_layers_only(monkeypatch, cpu_packs):
    """Each CPU kind's answer, whatever CPU runs the test (the layers packed here must be
    packable by this CPU, so the test builds them only where they are)."""
    monkeypatch.setattr(linear_module, "packable_dtypes", lambda: tuple(d for d in cpu_packs
                                                                      if d in packable_dtypes()))
    model = _mixed_model()
    expected = {d for d in cpu_packs if d in packable_dtypes()}
    assert pack_linears(model, batch_size=16) == len(expected)
    assert isinstance(model[0], PackedLinear) == (torch.bfloat16 in expected)
    assert isinstance(model[1][0], PackedLinear) == (torch.float16 in expected)
    assert type(model[2]) is nn.Linear  # fp32 stays on F.linear, the kernels HF uses


def test_unpackable_dtypes_keep_f_linear():
    """On this CPU: what it cannot pack stays an nn.Linear and still computes (the AMD fp16 case)."""
    model = _mixed_model()
    pack_linears(model, batch_size=16)
    for layer, dtype in ((model[0], torch.bfloat16), (model[1][0], torch.float16)):
        assert isinstance(layer, PackedLinear) == (dtype in packable_dtypes())
        assert layer(torch.ones(2, 8, dtype=dtype)).dtype == dtype


@pytest.mark.skipif(bf16_panels() is None, reason="bf16 panels run where the CPU has AVX512-BF16 and no AMX")
@pytest.mark.parametrize("rows", [1, 3, 8, 13, 64, 200])  # each tile of rows: 8, 4, then 3/2/1
@pytest.mark.parametrize("shape", [(160, 96), (48, 4864), (9728, 64)], ids=["small", "long-rows", "many-panels"])
@pytest.mark.parametrize("bias", [False, True])
def test_panel_linear_matches_f_linear(rows, shape, bias):
    gen = torch.Generator().manual_seed(rows)
    out_features, in_features = shape
    linear = nn.Linear(in_features, out_features, bias=bias, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(shape, generator=gen))
        if bias:
            linear.bias.copy_(torch.randn(out_features, generator=gen))
    x = torch.randn(rows, 2, in_features, generator=gen).bfloat16()[:, 1]  # rows not contiguous with each other
    expected = F.linear(x.float(), linear.weight.float(), None if linear.bias is None else linear.bias.float())
    got = PanelLinear(linear, bf16_panels())(x)
    assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
    torch.testing.assert_close(got.float(), expected, rtol=1.6e-2, atol=1e-1 * (in_features / 96) ** 0.5)


@pytest.mark.skipif(bf16_panels() is None, reason="bf16 panels run where the CPU has AVX512-BF16 and no AMX")
def test_pack_linears_takes_panels_where_the_shape_fits():
    model = nn.Sequential(nn.Linear(8, 32, dtype=torch.bfloat16), nn.Linear(32, 8, dtype=torch.bfloat16),
                          nn.Linear(8, 32, dtype=torch.float16))
    pack_linears(model, batch_size=16, panels=bf16_panels())
    assert isinstance(model[0], PanelLinear)
    assert isinstance(model[1], PackedLinear)  # 8 outputs: not a whole panel of 16
    assert isinstance(model[2], PackedLinear) == (torch.float16 in packable_dtypes())
