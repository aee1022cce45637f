"""Linear layers with oneDNN's pre-packed weights, for bf16 and fp16 models.

A plain bf16 `F.linear` on the CPU repacks its weight into oneDNN's blocked layout on every
call; packing once at load makes decode-sized matmuls about 1.5x faster (2x for the lm_head),
with results equal to F.linear's up to the order of the sums. fp32 keeps `F.linear` (MKL), the same kernels as HF transformers.
"""
from __future__ import annotations

import torch
from torch import nn

PACKED_DTYPES = (torch.bfloat16, torch.float16)


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, batch_size: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_size),
                                   requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def pack_linears(model: nn.Module, batch_size: int) -> int:
    """Swap every bf16/fp16 nn.Linear in `model` for a PackedLinear; returns how many.

    `batch_size` is oneDNN's hint for the rows it should block for (any count works).
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.Linear) and child.weight.dtype in PACKED_DTYPES]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child, batch_size))
    return len(swaps)
