"""The fused C++ layer ops for bf16 models (csrc/layer_ops.cpp); other dtypes, and layouts
the kernels do not take, keep the plain-torch defaults (fp32 stays op for op as HF)."""
from __future__ import annotations

import torch

from octavo.backend import LayerOps, Rope


class CpuLayerOps(LayerOps):
    def __init__(self, native):
        self.native = native  # the compiled kernels module

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                 gemma: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not _fusable(x, weight, residual):
            return super().rms_norm(x, weight, eps, residual, gemma)
        out = self.native.rms_norm(x, weight, eps, residual, gemma)
        return out if residual is None else (out, residual)

    def rope_rows(self, cos_sin_cache: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        if dtype != torch.bfloat16:
            return super().rope_rows(cos_sin_cache, positions, dtype)
        cos, sin = cos_sin_cache[positions].to(dtype).chunk(2, dim=-1)  # the kernel's [T, D / 2] halves
        return cos.contiguous(), sin.contiguous()

    def rope(self, rows: Rope, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if q.dtype != torch.bfloat16:
            return super().rope(rows, q, k)
        cos, sin = rows
        q, k = _rows_contiguous(q), _rows_contiguous(k)
        self.native.rope_(q, cos, sin)
        self.native.rope_(k, cos, sin)
        return q, k

    def act_and_mul(self, gate_up: torch.Tensor, act: str) -> torch.Tensor:
        if act != "silu" or not _fusable(gate_up):
            return super().act_and_mul(gate_up, act)
        return self.native.silu_and_mul(gate_up)


def _fusable(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (t.dtype == torch.bfloat16 and t.is_contiguous()) for t in tensors)


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """[T, H, D] whose head rows are contiguous (a q/k view of the fused qkv output is)."""
    return x if x.stride(2) == 1 and x.stride(1) == x.shape[2] else x.contiguous()
