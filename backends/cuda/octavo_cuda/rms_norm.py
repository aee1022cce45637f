"""Fused RMSNorm, optionally with the residual add in front, and Gemma's (1 + w) variant.

Rounding follows HF transformers so greedy tokens match:
- residual add in the activation dtype: h = x + residual (this is the new residual);
- Llama style: y = w * (h.float() * rsqrt(mean(h^2) + eps)).to(dtype);
- Gemma style: y = (h.float() * rsqrt(mean(h^2) + eps) * (1 + w.float())).to(dtype).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from octavo_cuda.launch import CUDA_LAUNCH, Launch, LaunchConfig, next_power_of_2


@triton.jit
def rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    stride_x, stride_r, stride_o, stride_ro,
    n_cols, eps,
    BLOCK_N: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    GEMMA: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x + r).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_ro + cols, x, mask=mask)
    xf = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xf * xf, axis=0) / n_cols + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    if GEMMA:
        y = xf * rstd * (1.0 + w.to(tl.float32))
    else:
        y = (xf * rstd).to(x_ptr.dtype.element_ty) * w
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, n)  # a view whenever the leading dims allow it


def rms_norm_launch(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor,
                    residual: torch.Tensor | None = None, residual_out: torch.Tensor | None = None,
                    gemma: bool = False, launch: LaunchConfig = CUDA_LAUNCH) -> Launch:
    n = x.shape[-1]
    if weight.shape != (n,):
        raise ValueError(f"weight must be [{n}], got {list(weight.shape)}")
    x2, o2 = _rows(x, n), out.view(-1, n)
    has_res = residual is not None
    r2 = _rows(residual, n) if has_res else x2
    ro2 = residual_out.view(-1, n) if has_res else o2
    block_n = next_power_of_2(n)
    return Launch(
        kernel=rms_norm_kernel,
        grid=(x2.shape[0],),
        args=dict(x_ptr=x2, residual_ptr=r2, weight_ptr=weight, out_ptr=o2, residual_out_ptr=ro2,
                  stride_x=x2.stride(0), stride_r=r2.stride(0), stride_o=o2.stride(0),
                  stride_ro=ro2.stride(0), n_cols=n, eps=float(eps)),
        constexprs=dict(BLOCK_N=block_n, HAS_RESIDUAL=has_res, GEMMA=bool(gemma)),
        num_warps=launch.warps_for_elements(block_n),
        num_stages=launch.num_stages,
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None,
             *, gemma: bool = False, launch: LaunchConfig = CUDA_LAUNCH):
    """RMSNorm over the last dimension of x [..., N].

    Without `residual`: returns the normalized tensor. With it: returns (normed, x + residual);
    the sum is the next layer's residual. Outputs are new tensors in x's dtype.
    `gemma=True` scales by (1 + weight) in fp32, as Gemma does.
    """
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    residual_out = None
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"residual {list(residual.shape)} != x {list(x.shape)}")
        residual_out = torch.empty_like(x, memory_format=torch.contiguous_format)
    rms_norm_launch(x, weight, eps, out, residual, residual_out, gemma, launch).run()
    return out if residual_out is None else (out, residual_out)
