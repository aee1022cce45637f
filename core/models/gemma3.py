"""Gemma 3 (text): (1 + w) norms around both sublayers, q/k norms, scaled embeddings,
local layers with a sliding window and their own rope base, optional logit soft-capping."""
from __future__ import annotations

import torch
from torch import nn

from octavo.backend import AttentionSpec, Communicator
from octavo.models.layers import Attention, ForwardContext, GatedMLP, GemmaRMSNorm, RotaryEmbedding, rope_inv_freq
from octavo.models.llama import head_dim_of, sliding_window_of
from octavo.models.ops import LayerOps, Rope
from octavo.models.parallel import (ColumnParallelLinear, HeadSplit, ParallelLMHead, RowParallelLinear,
                                    VocabParallelEmbedding, gather_logits)


class Gemma3Attention(nn.Module):
    def __init__(self, config, layer: int, ops: LayerOps, comm: Communicator):
        super().__init__()
        self.ops = ops
        self.comm = comm
        self.head_dim = head_dim_of(config)
        heads = HeadSplit.of(config.num_attention_heads, config.num_key_value_heads, comm.rank, comm.world_size)
        self.num_heads, self.num_kv_heads = heads.num_heads, heads.num_kv_heads
        self.qkv_proj = ColumnParallelLinear.qkv(config.hidden_size, heads, self.head_dim, config.attention_bias)
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                        config.attention_bias, comm, "attention heads")
        self.split = self.qkv_proj.output_sizes
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps, ops)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps, ops)
        self.attn = Attention(AttentionSpec(self.num_heads, self.num_kv_heads, self.head_dim,
                                            scale=config.query_pre_attn_scalar ** -0.5,
                                            sliding_window=sliding_window_of(config, layer),
                                            logit_softcap=config.attn_logit_softcapping))

    def forward(self, rope: Rope, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = self.q_norm(q.view(-1, self.num_heads, self.head_dim))
        k = self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim))
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        q, k = self.ops.rope(rope, q, k)
        out = self.attn(q, k, v, ctx)
        return self.comm.all_reduce(self.o_proj(out.reshape(-1, self.num_heads * self.head_dim)))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer: int, ops: LayerOps, comm: Communicator):
        super().__init__()
        eps = config.rms_norm_eps
        self.layer_type = config.layer_types[layer]
        self.self_attn = Gemma3Attention(config, layer, ops, comm)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_activation, ops, comm)
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps, ops)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps, ops)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps, ops)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps, ops)

    def forward(self, rope: Rope, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        """As `LlamaDecoderLayer.forward`; the sandwich norms after each sublayer stay unfused."""
        if residual is None:
            x, residual = self.input_layernorm(x), x
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.post_attention_layernorm(self.self_attn(rope, x, ctx))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


class Gemma3Model(nn.Module):
    def __init__(self, config, max_positions: int, ops: LayerOps, comm: Communicator):
        super().__init__()
        head_dim = head_dim_of(config)
        self.rotary = nn.ModuleDict({kind: RotaryEmbedding(*rope_inv_freq(config, head_dim, kind), max_positions, ops)
                                     for kind in sorted(set(config.layer_types))})
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, comm)
        self.embed_scale = config.hidden_size ** 0.5
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, i, ops, comm)
                                    for i in range(config.num_hidden_layers))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps, ops)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext):
        x = self.embed_tokens(input_ids)
        x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        ropes = {kind: rotary(positions, x.dtype) for kind, rotary in self.rotary.items()}
        residual = None
        for layer in self.layers:
            x, residual = layer(ropes[layer.layer_type], x, residual, ctx)
        return self.norm(x, residual)[0]


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, config, max_positions: int, ops: LayerOps, comm: Communicator):
        super().__init__()
        self.comm = comm
        self.vocab_size = config.vocab_size
        self.model = Gemma3Model(config, max_positions, ops, comm)
        self.lm_head = ParallelLMHead(config.hidden_size, config.vocab_size, comm)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.final_softcap = config.final_logit_softcapping

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext):
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """fp32 logits on rank 0; None on the other tensor-parallel ranks."""
        logits = gather_logits(self.lm_head, hidden, self.comm, self.vocab_size)
        if logits is not None and self.final_softcap is not None:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits
