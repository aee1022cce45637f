"""Dense linear layers with their weights packed once at load, for bf16 and fp16 models.

A plain bf16 `F.linear` on the CPU repacks its weight into oneDNN's blocked layout on every
call; packing once at load makes decode-sized matmuls about 1.5x faster (2x for the lm_head),
with results equal to F.linear's up to the order of the sums. On CPUs with AVX512-BF16 and
no AMX, bf16 weights go into our own panels instead (csrc/bf16_linear.cpp), which stream
from memory in order: 1.3x oneDNN's packed speed at batch 1 here and no slower up to
prefills (`bench/README.md`). fp32 keeps `F.linear` (MKL), the same kernels as HF transformers.
"""
from __future__ import annotations

import torch
from torch import nn



def packable_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes oneDNN can pre-pack on this CPU: fp16 packing needs AVX512-FP16 or
    AVX-NE-CONVERT (Sapphire Rapids and later Intel CPUs; not AMD Zen 4), bf16 needs AVX-512."""
    if not torch.backends.mkldnn.is_available():
        return ()
    return tuple(dtype for dtype, ok in ((torch.bfloat16, torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                                         (torch.float16, torch.ops.mkldnn._is_mkldnn_fp16_supported())) if ok)


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, batch_size: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_size),
                                   requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


class PanelLinear(nn.Module):
    """A bf16 linear on our panels (16 output features each; out_features % 16 == 0)."""

    def __init__(self, linear: nn.Linear, native):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(native.bf16_pack(linear.weight.detach()), requires_grad=False)
        self.bias = linear.bias
        self.native = native.Linear.panels(self.weight.detach(), None if self.bias is None else self.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.native.forward(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module, batch_size: int, panels=None) -> int:
    """Swap every nn.Linear whose dtype this CPU packs (`packable_dtypes`) for a PackedLinear,
    or with `panels` (the kernels module, `kernels.bf16_panels()`) a bf16 one whose shape fits
    for a PanelLinear; returns how many. The others keep F.linear.

    `batch_size` is oneDNN's hint for the rows it should block for (any count works).
    """
    dtypes = packable_dtypes()
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.Linear) and child.weight.dtype in dtypes]
    for parent, name, child in swaps:
        fits_panels = child.weight.dtype == torch.bfloat16 and child.out_features % 16 == 0 and child.in_features % 2 == 0
        setattr(parent, name, PanelLinear(child, panels) if panels is not None and fits_panels
                else PackedLinear(child, batch_size))
    return len(swaps)
