"""Linear layers on GGUF-quantized weights, multiplied in their blocks (csrc/quant*.cpp).

A decode step reads each weight once: 4.5-8.5 bits per weight instead of bf16's 16, so
batch-1 decode, which waits on memory, speeds up about as much. The kernels quantize the
activations per 32 values to int8 (as llama.cpp does) and take integer dot products of
bytes with the weights' 4-8 bit values, scaled per block.
"""
from __future__ import annotations

import torch
from torch import nn

from octavo.backend import QuantizedTensor
from octavo_cpu.kernels import bf16_panels

# GGUF's type numbers (ggml_type) of the formats the kernels read.
GGML_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
QUANTIZED_TYPES = frozenset(GGML_TYPES)


class QuantLinear(nn.Module):
    """y = x W^T + b with W's output rows in parts (q/k/v, gate/up), each a QuantizedTensor or,
    for a part of a type the kernels do not read, dense."""

    def __init__(self, parts: list[QuantizedTensor | torch.Tensor], bias: torch.Tensor | None, kernels):
        super().__init__()
        self.in_features = parts[0].shape[1]
        self.out_features = sum(part.shape[0] for part in parts)
        # (first row, end row, ggml type or -1 for dense, tensor): a plain list, read every step.
        # Neighbouring shards of one type are one part: one kernel call for all of q/k/v.
        self.parts: list[tuple[int, int, int, torch.Tensor]] = []
        start = 0
        for part in parts:
            ggml_type = GGML_TYPES[part.qtype] if isinstance(part, QuantizedTensor) else -1
            tensor = part.data if ggml_type >= 0 else part
            if self.parts and self.parts[-1][2] == ggml_type:
                first, _, _, previous = self.parts.pop()
                tensor = torch.cat([previous, tensor])
                start = first
            self.parts.append((start, start + tensor.shape[0], ggml_type, tensor))
            start += tensor.shape[0]
        for i, (_, _, _, tensor) in enumerate(self.parts):
            self.register_buffer(f"part{i}", tensor, persistent=False)
        self.bias = bias
        # The multiply itself (csrc/linear.cpp): per part, the integer kernel for its type, or for
        # batches of bf16 rows its rows dequantized into bf16 panels (prefills: oneDNN without them).
        self.native = kernels.Linear.quantized(self.parts, None if bias is None else bias.detach(), self.in_features,
                                               bf16_panels() is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.native.forward(x.reshape(-1, self.in_features)).view(*x.shape[:-1], self.out_features)


def quantized_parts(linear: nn.Linear) -> list[QuantizedTensor | torch.Tensor]:
    """The linear's shards: its QuantizedTensors, and its weight rows where a shard is dense."""
    sizes = getattr(linear, "output_sizes", [linear.out_features])
    parts, start = [], 0
    for size, quantized in zip(sizes, linear.quantized_weights):
        parts.append(quantized if quantized is not None else linear.weight.detach()[start:start + size].clone())
        start += size
    return parts


def quantize_linears(model: nn.Module, kernels) -> int:
    """Swap every linear that the loader gave quantized weights for a QuantLinear (dropping
    its dense weight); returns how many."""
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, nn.Linear) and getattr(child, "quantized_weights", None) is not None]
    for parent, name, child in swaps:
        setattr(parent, name, QuantLinear(quantized_parts(child), child.bias, kernels))
    return len(swaps)



# Weight-only quantization of dense checkpoints at load: the scheme -> the GGUF format made.
# int8: 32 weights per fp16 scale (Q8_0); int4 group-wise: 32 weights per fp16 scale and min (Q4_1).
SCHEMES = {"int8": "Q8_0", "int4": "Q4_1"}


def quantize_weight(weight: torch.Tensor, qtype: str) -> QuantizedTensor:
    """A dense [out, in] weight in a GGUF format (the `gguf` package's quantizer)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    data = quantize(weight.detach().float().numpy(), GGMLQuantizationType[qtype])
    return QuantizedTensor(qtype, torch.from_numpy(data), (weight.shape[0], weight.shape[1]))


def quantize_dense_linears(model: nn.Module, scheme: str) -> int:
    """Give every dense linear (in_features a multiple of 32) quantized weights, shard by
    shard, for `quantize_linears` to swap; returns how many."""
    from tqdm import tqdm

    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features % 32 == 0
               and getattr(m, "quantized_weights", None) is None]
    for linear in tqdm(linears, desc=f"quantizing linears to {scheme}", unit="layer", leave=False, delay=2):
        shards = linear.weight.split(getattr(linear, "output_sizes", [linear.out_features]))
        linear.quantized_weights = [quantize_weight(shard, SCHEMES[scheme]) for shard in shards]
    return len(linears)
