"""Pre-packed oneDNN linears give F.linear's results, and only low-precision layers are packed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from octavo_cpu.linear import PackedLinear, pack_linears

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_linear_matches_f_linear(rows, bias, dtype):
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


def test_pack_linears_swaps_bf16_layers_only():
    model = nn.Sequential(nn.Linear(8, 8, dtype=torch.bfloat16), nn.Sequential(nn.Linear(8, 4, dtype=torch.float16)),
                          nn.Linear(4, 4))
    assert pack_linears(model, batch_size=16) == 2
    assert isinstance(model[0], PackedLinear) and isinstance(model[1][0], PackedLinear)
    assert type(model[2]) is nn.Linear  # fp32 stays on F.linear, the kernels HF uses
