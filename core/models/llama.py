"""The Llama family: Llama (SmolLM2), Mistral, Qwen2 (Qwen2.5) and Qwen3.

They differ only in q/k/v bias (Qwen2), per-head q/k norms (Qwen3) and sliding windows
(Mistral, some Qwen2 layers), all read from the HF config.
"""
from __future__ import annotations

import torch
from torch import nn

from octavo.backend import AttentionSpec, Communicator
from octavo.models.layers import (Attention, DecoderLayer, DecoderLayerParts, ForwardContext, GatedMLP, RMSNorm,
                                  RotaryEmbedding, rope_inv_freq)
from octavo.models.ops import LayerOps, Rope
from octavo.models.parallel import (ColumnParallelLinear, HeadSplit, ParallelLMHead, RowParallelLinear,
                                    VocabParallelEmbedding, gather_logits)


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_window_of(config, layer: int) -> int | None:
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return config.sliding_window if layer_types[layer] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


class LlamaAttention(nn.Module):
    """This rank's heads (all of them at one rank); o_proj's partial sums are all-reduced."""

    def __init__(self, config, layer: int, qk_norm: bool, ops: LayerOps, comm: Communicator):
        super().__init__()
        self.ops = ops
        self.comm = comm
        self.head_dim = head_dim_of(config)
        heads = HeadSplit.of(config.num_attention_heads, config.num_key_value_heads, comm.rank, comm.world_size)
        self.num_heads, self.num_kv_heads = heads.num_heads, heads.num_kv_heads
        bias = getattr(config, "attention_bias", False) or config.model_type == "qwen2"
        self.qkv_proj = ColumnParallelLinear.qkv(config.hidden_size, heads, self.head_dim, bias)
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                        getattr(config, "attention_bias", False), comm, "attention heads")
        self.split = self.qkv_proj.output_sizes
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, ops) if qk_norm else None
        self.attn = Attention(AttentionSpec(self.num_heads, self.num_kv_heads, self.head_dim,
                                            scale=self.head_dim ** -0.5,
                                            sliding_window=sliding_window_of(config, layer)))

    def forward(self, rope: Rope, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.ops.rope(rope, q, k)
        out = self.attn(q, k, v, ctx)
        return self.comm.all_reduce(self.o_proj(out.reshape(-1, self.num_heads * self.head_dim)))


class LlamaDecoderLayer(DecoderLayer):
    def __init__(self, config, layer: int, qk_norm: bool, ops: LayerOps, comm: Communicator):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer, qk_norm, ops, comm)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, ops, comm)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    def parts(self) -> DecoderLayerParts | None:
        """The plain form, where q/k norms (Qwen3) and tensor-parallel all-reduces are absent."""
        attn = self.self_attn
        if attn.q_norm is not None or attn.comm.world_size > 1:
            return None
        return DecoderLayerParts(self.input_layernorm, self.post_attention_layernorm, attn.qkv_proj, attn.o_proj,
                                 self.mlp.gate_up_proj, self.mlp.down_proj, self.mlp.act, attn.attn)

    def forward(self, rope: Rope, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """vLLM's form: each residual add runs inside the norm after it (one kernel where fused).

        x is the last sublayer's output and `residual` the stream it is still to be added to
        (on the first layer: the embeddings, and None); returns the same pair for the next.
        """
        if self.fused is not None and (out := self.fused(rope, x, residual, ctx)) is not None:
            return out
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x, residual = self.post_attention_layernorm(self.self_attn(rope, x, ctx), residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, config, max_positions: int, ops: LayerOps, comm: Communicator):
        super().__init__()
        qk_norm = config.model_type == "qwen3"
        inv_freq, scaling = rope_inv_freq(config, head_dim_of(config))
        self.rotary = RotaryEmbedding(inv_freq, scaling, max_positions, ops)
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, comm)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i, qk_norm, ops, comm)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext):
        x = self.embed_tokens(input_ids)
        rope = self.rotary(positions, x.dtype)
        residual = None
        for layer in self.layers:
            x, residual = layer(rope, x, residual, ctx)
        return self.norm(x, residual)[0]


class LlamaForCausalLM(nn.Module):
    def __init__(self, config, max_positions: int, ops: LayerOps, comm: Communicator):
        super().__init__()
        self.comm = comm
        self.vocab_size = config.vocab_size
        self.model = LlamaModel(config, max_positions, ops, comm)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, comm)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext):
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """fp32 logits on rank 0; None on the other tensor-parallel ranks."""
        return gather_logits(self.lm_head, hidden, self.comm, self.vocab_size)
