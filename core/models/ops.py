"""`LayerOps`: the small per-layer math of the core's models, which a backend may fuse.

`Backend.layer_ops()` returns one; the worker hands it to the model when it builds it, and
every RMSNorm (with the residual add in front of it), rotary embedding and gated MLP
activation goes through it.
The defaults here are plain torch, op for op as HF transformers, so the CPU backend matches
HF bit for bit. A backend overrides a method with kernels that compute the same thing (the
GPU backends' fused RMSNorm and rotary kernels turn ~8 small kernels into one).

Nothing here may read device memory back to the host: decode steps are captured in graphs.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Rope = Any  # one step's rope rows: made by `LayerOps.rope_rows`, read by `LayerOps.rope`


class LayerOps:
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                 gemma: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """RMSNorm over the last dim: normalise in fp32, cast back, then scale by w (Llama) or,
        with `gemma`, scale by (1 + w) in fp32 and then cast back.

        With `residual` (vLLM's fused add): h = x + residual first, returns (norm(h), h), h being
        the next residual. x and residual may be overwritten: callers use only the results.
        """
        if residual is not None:
            x = residual = x.add_(residual)
        h = x.float()
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True).add_(eps))
        out = h.mul_(1.0 + weight.float()).type_as(x) if gemma else weight * h.to(x.dtype)
        return out if residual is None else (out, residual)

    def rope_rows(self, cos_sin_cache: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        """Once per step and table: what `rope` needs for this step's positions.

        `cos_sin_cache` [max_positions, head_dim] fp32 is vLLM's layout: cos of each frequency
        in the first half, sin in the second, both times the rope's attention scaling.
        """
        cos, sin = cos_sin_cache[positions].to(dtype).unsqueeze(1).chunk(2, dim=-1)
        return torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)

    def rope(self, rows: Rope, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Neox-style (HF `rotate_half`) rotation of q [T, H, D] and k [T, Hkv, D].

        May rotate in place: callers use only the results.
        """
        cos, sin = rows
        return (q * cos).add_(_rotate_half(q).mul_(sin)), (k * cos).add_(_rotate_half(k).mul_(sin))


    def act_and_mul(self, gate_up: torch.Tensor, act: str) -> torch.Tensor:
        """act(gate) * up for gate_up = [gate | up] on the last dim (`act` a key of ACTIVATIONS).

        May overwrite gate_up: callers use only the result.
        """
        gate, up = gate_up.chunk(2, dim=-1)
        return ACTIVATIONS[act](gate).mul_(up)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": _gelu_tanh, "gelu": F.gelu}  # HF config names


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
