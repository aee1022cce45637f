"""`TritonLayerOps`: the core models' RMSNorms and rotary embeddings on this package's kernels.

The torch defaults (`octavo.models.ops.LayerOps`) cost ~8 small kernels per norm and ~10
per rotary of q and k; here each is one launch, and the residual add before a norm runs
inside it. Decode steps are bound by kernel launches, so this is where they pay.

Rotary: the core's table (`RotaryEmbedding.cos_sin_cache`, [max_positions, head_dim] fp32,
cos | sin) is already the kernel's layout, built once per model; the kernel looks rows up by
position itself, so `rope_rows` does no work. Every rope the core builds is such a table,
with rope scaling folded in (llama3, yarn, linear, ...), and rotates the whole head Neox
style, so no variant falls back to torch.
"""
from __future__ import annotations

import torch

from octavo.backend import LayerOps, Rope
from octavo_cuda.launch import CUDA_LAUNCH, LaunchConfig
from octavo_cuda.rms_norm import rms_norm
from octavo_cuda.rotary import rotary_embedding


class TritonLayerOps(LayerOps):
    def __init__(self, launch: LaunchConfig = CUDA_LAUNCH):
        self.launch = launch

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                 gemma: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return rms_norm(x, weight, eps, residual, gemma=gemma, launch=self.launch)

    def rope_rows(self, cos_sin_cache: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        return positions, cos_sin_cache

    def rope(self, rows: Rope, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """In place: q and k are fresh views of this layer's projections."""
        positions, cos_sin_cache = rows
        return rotary_embedding(positions, q, k, cos_sin_cache, inplace=True, launch=self.launch)
