"""The model as an OpenVINO graph with paged attention, built from HF-named weights.

One graph serves every family the core knows (Llama/SmolLM2, Mistral, Qwen2/2.5, Qwen3,
Gemma 3): the differences are read from the HF config and from which tensors exist (q/k/v
biases, q/k norms, Gemma's sandwich norms). Each attention layer is OpenVINO's
`PagedAttentionExtension` over the engine's block tables, so one inference request runs a
whole step: prefill chunks and decodes of any number of requests, with context already in
the cache (prefix hits, earlier chunks). Logits are computed only for the rows in
`sample_indices`.

Numerics follow the core's torch models (and so HF): RMSNorm in fp32, neox rotary with the
same inverse frequencies, Gemma's (1 + w) norms and scaled embeddings.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import openvino as ov
import openvino.opset16 as op
import torch
from openvino._pyopenvino.op import _PagedAttentionExtension as PagedAttention

from octavo.backend import ConfigError, head_dim_of, rope_inv_freq, sliding_window_of

# Inputs of one step; every per-request array is in the step's request order.
STEP_INPUTS = {
    "input_ids": ov.Type.i64,  # [T] the step's new tokens
    "positions": ov.Type.i64,  # [T]
    "past_lens": ov.Type.i32,  # [B] tokens already in the cache per request
    "subsequence_begins": ov.Type.i32,  # [B + 1] offsets of each request's new tokens
    "block_indices": ov.Type.i32,  # the requests' block tables, concatenated
    "block_indices_begins": ov.Type.i32,  # [B + 1] offsets into block_indices
    "max_context_len": ov.Type.i32,  # [] longest context in the step
    "sample_indices": ov.Type.i64,  # [S] rows of the step whose logits are wanted
}
BODY_INPUTS = ("input_ids", "positions", "sample_indices")  # the rest feed only paged attention
KEY_CACHE, VALUE_CACHE = "key_cache.{}", "value_cache.{}"
ATTN_IN, ATTN_OUT = "attn_{}.{}", "attn_out.{}"  # the body's ends around each attention layer
LOGITS = "logits"

ACTIVATIONS: dict[str, Callable] = {
    "silu": op.swish,
    "gelu_pytorch_tanh": lambda x: op.gelu(x, "tanh"),
    "gelu": lambda x: op.gelu(x, "erf"),
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What the graph needs from the HF config, family differences resolved."""

    architecture: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    hidden_act: str
    scale: float
    sliding_window: tuple[int | None, ...]  # per layer
    layer_rope: tuple[str | None, ...]  # per layer: its key in `rope`
    rope: dict[str | None, tuple[np.ndarray, float]]  # inverse frequencies and scaling per kind
    tie_word_embeddings: bool
    gemma_norms: bool  # (1 + w) norms, sandwich norms, scaled embeddings
    embed_scale: float
    final_softcap: float | None

    @classmethod
    def from_hf(cls, architecture: str, cfg) -> ModelSpec:
        gemma = architecture == "Gemma3ForCausalLM"
        if getattr(cfg, "attn_logit_softcapping", None):
            raise ConfigError("attention logit soft-capping is not supported by OpenVINO's paged attention")
        hidden_act = cfg.hidden_activation if gemma else cfg.hidden_act
        if hidden_act not in ACTIVATIONS:
            raise ConfigError(f"unsupported activation {hidden_act!r} (known: {', '.join(ACTIVATIONS)})")
        head_dim = head_dim_of(cfg)
        layers = range(cfg.num_hidden_layers)
        kinds = tuple(cfg.layer_types[i] if gemma else None for i in layers)
        rope = {}
        for kind in set(kinds):
            inv_freq, scaling = rope_inv_freq(cfg, head_dim, kind)
            rope[kind] = (inv_freq.float().numpy(), float(scaling))
        return cls(
            architecture=architecture, num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, head_dim=head_dim,
            eps=cfg.rms_norm_eps, hidden_act=hidden_act,
            scale=(cfg.query_pre_attn_scalar if gemma else head_dim) ** -0.5,
            sliding_window=tuple(sliding_window_of(cfg, i) for i in layers), layer_rope=kinds, rope=rope,
            tie_word_embeddings=bool(cfg.tie_word_embeddings), gemma_norms=gemma,
            embed_scale=cfg.hidden_size ** 0.5 if gemma else 1.0,
            final_softcap=getattr(cfg, "final_logit_softcapping", None))


def _i64(values) -> ov.Node:
    return op.constant(np.asarray(values, dtype=np.int64))


def _f32(value) -> ov.Node:
    return op.constant(np.asarray(value, dtype=np.float32))


def _unused_inputs() -> list[ov.Node]:
    """PagedAttentionExtension inputs 13..27 (score aggregation, cache rotation, xattention,
    sinks, adaptive R-KV, token types, qq bias): empty, as OpenVINO's own conversion leaves them."""
    def empty(dtype):
        return op.constant(np.zeros(0, dtype=dtype))

    def zero():
        return op.constant(np.int32(0))

    return [empty(np.int32), empty(np.int32), empty(np.int32), empty(np.float32), empty(np.float32),
            zero(), zero(), empty(np.float32), zero(), empty(np.int32), empty(np.int32), empty(np.int32),
            empty(np.int32), empty(np.uint8), empty(np.int32)]


class GraphBuilder:
    """Builds the body of one model's graph from its HF-named tensors (`weights`, consumed as
    they are used). `weight_type` is how matrices are stored: f32, or bf16 converted to f32
    inside the graph, which the CPU plugin keeps in bf16 and decompresses in its matmuls."""

    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor], weight_type: ov.Type):
        self.spec = spec
        self.weights = weights
        self.weight_type = weight_type
        self.params: dict[str, ov.Node] = {}
        self._shared: dict[str, ov.Node] = {}
        self.attn_inputs: list[ov.Node] = []

    # -------------------------------------------------------------------- pieces

    def matrix(self, name: str) -> ov.Node:
        """A weight matrix as a constant (one node per tensor: tied embeddings share it)."""
        if name not in self._shared:
            t = self.weights.pop(name)
            if self.weight_type == ov.Type.bf16:
                raw = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()  # torch rounds to nearest even
                stored = op.constant(ov.Tensor(raw, ov.Shape(list(t.shape)), ov.Type.bf16), shared_memory=False)
                node = op.convert(stored, ov.Type.f32)
            else:
                node = op.constant(t.float().contiguous().numpy())
            self._shared[name] = node
        return self._shared[name]

    def vector(self, name: str) -> np.ndarray | None:
        t = self.weights.pop(name, None)
        return None if t is None else t.float().numpy()

    def linear(self, x: ov.Node, name: str) -> ov.Node:
        y = op.matmul(x, self.matrix(name + ".weight"), False, True)
        bias = self.vector(name + ".bias")
        return y if bias is None else op.add(y, _f32(bias))

    def rms_norm(self, x: ov.Node, name: str) -> ov.Node:
        var = op.reduce_mean(op.multiply(x, x), _i64([-1]), True)
        y = op.multiply(x, op.power(op.add(var, _f32(self.spec.eps)), _f32(-0.5)))
        w = self.vector(name + ".weight")
        return op.multiply(y, _f32(1.0 + w if self.spec.gemma_norms else w))

    def param(self, name: str, dtype: ov.Type, shape: list[int]) -> ov.Node:
        self.params[name] = _param(name, dtype, shape)
        return self.params[name]

    def rope_tables(self, positions: ov.Node) -> dict[str | None, tuple[ov.Node, ov.Node]]:
        """cos and sin [T, 1, D] per rope kind (Gemma 3: local and global layers differ)."""
        pos = op.unsqueeze(op.convert(positions, ov.Type.f32), _i64(1))
        tables = {}
        for kind, (inv_freq, scaling) in self.spec.rope.items():
            freqs = op.multiply(pos, _f32(inv_freq[None, :]))
            emb = op.concat([freqs, freqs], -1)
            cos = op.multiply(op.cos(emb), _f32(scaling))
            sin = op.multiply(op.sin(emb), _f32(scaling))
            tables[kind] = (op.unsqueeze(cos, _i64(1)), op.unsqueeze(sin, _i64(1)))
        return tables

    @staticmethod
    def rotate(x: ov.Node, cos: ov.Node, sin: ov.Node) -> ov.Node:
        x1, x2 = op.split(x, _i64(-1), 2).outputs()
        return op.add(op.multiply(x, cos), op.multiply(op.concat([op.negative(x2), x1], -1), sin))

    # -------------------------------------------------------------------- layers

    def attention(self, h: ov.Node, i: int, rope) -> ov.Node:
        """q, k, v leave the body as results, the attention output comes back as a parameter:
        `stitch` joins them through the paged-attention node."""
        s, pre = self.spec, f"model.layers.{i}.self_attn."
        q = op.reshape(self.linear(h, pre + "q_proj"), _i64([0, s.num_heads, s.head_dim]), True)
        k = op.reshape(self.linear(h, pre + "k_proj"), _i64([0, s.num_kv_heads, s.head_dim]), True)
        v = self.linear(h, pre + "v_proj")
        if pre + "q_norm.weight" in self.weights:
            q, k = self.rms_norm(q, pre + "q_norm"), self.rms_norm(k, pre + "k_norm")
        cos, sin = rope[s.layer_rope[i]]
        q = op.reshape(self.rotate(q, cos, sin), _i64([0, s.num_heads * s.head_dim]), True)
        k = op.reshape(self.rotate(k, cos, sin), _i64([0, s.num_kv_heads * s.head_dim]), True)
        for name, node in (("q", q), ("k", k), ("v", v)):
            result = op.result(node)
            result.output(0).get_tensor().set_names({ATTN_IN.format(name, i)})
            self.attn_inputs.append(result)
        out = self.param(ATTN_OUT.format(i), ov.Type.f32, [-1, s.num_heads * s.head_dim])
        return self.linear(out, pre + "o_proj")

    def mlp(self, h: ov.Node, i: int) -> ov.Node:
        pre = f"model.layers.{i}.mlp."
        act = ACTIVATIONS[self.spec.hidden_act](self.linear(h, pre + "gate_proj"))
        return self.linear(op.multiply(act, self.linear(h, pre + "up_proj")), pre + "down_proj")

    def layer(self, x: ov.Node, i: int, rope) -> ov.Node:
        pre = f"model.layers.{i}."
        a = self.attention(self.rms_norm(x, pre + "input_layernorm"), i, rope)
        if self.spec.gemma_norms:  # sandwich norms around both sublayers
            x = op.add(x, self.rms_norm(a, pre + "post_attention_layernorm"))
            m = self.mlp(self.rms_norm(x, pre + "pre_feedforward_layernorm"), i)
            return op.add(x, self.rms_norm(m, pre + "post_feedforward_layernorm"))
        x = op.add(x, a)
        return op.add(x, self.mlp(self.rms_norm(x, pre + "post_attention_layernorm"), i))

    def build(self, progress: Callable[[], None] = lambda: None) -> ov.Model:
        s = self.spec
        if s.tie_word_embeddings:
            self.weights.pop("lm_head.weight", None)  # some checkpoints store the tied copy
        step = {name: self.param(name, STEP_INPUTS[name], [-1]) for name in BODY_INPUTS}
        x = op.gather(self.matrix("model.embed_tokens.weight"), step["input_ids"], _i64(0))
        if s.embed_scale != 1.0:
            x = op.multiply(x, _f32(s.embed_scale))
        rope = self.rope_tables(step["positions"])
        for i in range(s.num_layers):
            x = self.layer(x, i, rope)
            progress()
        x = op.gather(self.rms_norm(x, "model.norm"), step["sample_indices"], _i64(0))
        head = "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"
        logits = op.matmul(x, self.matrix(head), False, True)
        if s.final_softcap:
            logits = op.multiply(op.tanh(op.divide(logits, _f32(s.final_softcap))), _f32(s.final_softcap))
        result = op.result(logits)
        result.output(0).get_tensor().set_names({LOGITS})
        left = sorted(k for k in self.weights if "rotary_emb" not in k)
        if left:
            raise ConfigError(f"checkpoint tensors the graph did not use: {left[:5]} ({len(left)})")
        return ov.Model([result, *self.attn_inputs], list(self.params.values()), s.architecture)


def stitch(body: ov.Model, spec: ModelSpec) -> ov.Model:
    """Join the body's attention inputs and outputs through OpenVINO's paged attention, one
    node per layer over the engine's block tables (in place; returns the model)."""
    step = {name: _param(name, dtype, [] if name == "max_context_len" else [-1])
            for name, dtype in STEP_INPUTS.items() if name not in BODY_INPUTS}
    results = {r.output(0).get_any_name(): r for r in body.get_results()}
    params = {p.output(0).get_any_name(): p for p in body.get_parameters()}
    caches = []
    for i in range(spec.num_layers):
        q, k, v = (results[ATTN_IN.format(n, i)] for n in "qkv")
        caches += [_param(KEY_CACHE.format(i), ov.Type.dynamic, [-1, -1, -1, -1]),
                   _param(VALUE_CACHE.format(i), ov.Type.dynamic, [-1, -1, -1, -1])]
        pa = PagedAttention([n.output(0) if isinstance(n, ov.Node) else n for n in (
            q.input_value(0), k.input_value(0), v.input_value(0), *caches[-2:],
            step["past_lens"], step["subsequence_begins"], step["block_indices"], step["block_indices_begins"],
            _f32(spec.scale), op.constant(np.int32(spec.sliding_window[i] or 0)),  # window 0: none
            op.constant(np.zeros(0, np.float32)),  # no ALiBi slopes
            step["max_context_len"], *_unused_inputs())])
        # The CPU plugin sizes each layer's cache input from this runtime info (and the KV precision).
        rt = pa.get_rt_info()
        rt["num_k_heads"] = rt["num_v_heads"] = spec.num_kv_heads
        rt["k_head_size"] = rt["v_head_size"] = spec.head_dim
        out = params[ATTN_OUT.format(i)]
        out.output(0).replace(pa.output(0))
        body.remove_parameter(out)
        for r in (q, k, v):
            body.remove_result(r)
    body.add_parameters([*step.values(), *caches])
    body.validate_nodes_and_infer_types()
    return body


def _param(name: str, dtype: ov.Type, shape: list[int]) -> ov.Node:
    node = op.parameter(shape, dtype, name=name)
    node.output(0).get_tensor().set_names({name})
    return node
