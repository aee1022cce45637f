"""Decoder layers whose decode steps run as one native call (csrc/decode_layer.cpp).

At batch 1 on a small model, a step's Python (module calls, views, one kernel call per op)
costs more than its matmuls: a Q8_0 SmolLM2-135M step took 9.1 ms op by op and 6.9 ms fused
at one thread here. A fused layer chains the same kernels in C++; prefill, mixed and padded
steps keep the layer's own forward.
Taken: bf16 layers of the plain pre-norm form (`DecoderLayer.parts()`) with SiLU, no logit
softcap, whose linears are the backend's QuantLinear, PanelLinear or PackedLinear.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from octavo.backend import DecoderLayer, DecoderLayerParts, ForwardContext, Rope
from octavo_cpu.linear import PackedLinear, PanelLinear
from octavo_cpu.quant import QuantLinear


class FusedDecodeLayer:
    """`DecoderLayer.fused` for the CPU: takes decode-only steps, returns None for the rest."""

    def __init__(self, parts: DecoderLayerParts, native):
        self.attention = parts.attention
        self.cache_of: torch.Tensor | None = None  # the kv_cache that `caches` views
        self.caches: tuple[torch.Tensor, torch.Tensor, bool] = ()
        spec = parts.attention.spec
        self.native = native.DecodeLayer(
            parts.input_norm.weight.detach(), parts.post_attention_norm.weight.detach(), parts.input_norm.eps,
            *(native_linear(m, native) for m in (parts.qkv_proj, parts.o_proj, parts.gate_up_proj, parts.down_proj)),
            spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.scale, spec.sliding_window or 0)

    def __call__(self, rope: Rope, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext):
        md = ctx.metadata
        if not md.decode_only:
            return None
        kv_cache = self.attention.kv_cache
        if kv_cache is not self.cache_of:  # the cache's K and V views, once per binding
            amx = ctx.attn.uses_amx(self.attention.spec, kv_cache)
            self.caches = (*ctx.attn.block_views(kv_cache, self.attention.spec.head_dim, amx), amx)
            self.cache_of = kv_cache
        return self.native.forward(x, residual, *rope, *self.caches, md.slot_mapping, md.decode.block_table,
                                   md.decode.seq_lens)


def native_linear(module: nn.Module, native):
    if isinstance(module, (QuantLinear, PanelLinear)):
        return module.native
    bias = None if module.bias is None else module.bias.detach()
    return native.Linear.packed(module.weight.detach(), bias, module.in_features, module.out_features)


def fusable(parts: DecoderLayerParts | None) -> bool:
    linears = () if parts is None else (parts.qkv_proj, parts.o_proj, parts.gate_up_proj, parts.down_proj)
    return (parts is not None and parts.act == "silu" and parts.attention.spec.logit_softcap is None
            and not parts.input_norm.gemma and parts.input_norm.weight.dtype == torch.bfloat16
            and all(isinstance(m, (QuantLinear, PackedLinear, PanelLinear)) for m in linears))


def fuse_decoder_layers(model: nn.Module, native) -> int:
    """Give every fusable decoder layer its native decode step; returns how many.
    OCTAVO_CPU_FUSED=0 keeps every layer op by op (the reference the fused steps must equal)."""
    if native is None or os.environ.get("OCTAVO_CPU_FUSED", "1") == "0":
        return 0
    layers = [(m, m.parts()) for m in model.modules() if isinstance(m, DecoderLayer)]
    for layer, parts in layers:
        if fusable(parts):
            layer.fused = FusedDecodeLayer(parts, native)
    return sum(layer.fused is not None for layer, _ in layers)
