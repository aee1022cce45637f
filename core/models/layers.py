"""Building blocks shared by the model families; numerics follow HF transformers op for op."""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from octavo.backend import AttentionBackend, AttentionSpec, Communicator, QuantizedTensor
from octavo.models.ops import ACTIVATIONS, LayerOps, Rope
from octavo.models.parallel import ColumnParallelLinear, RowParallelLinear, read_whole


@dataclass(slots=True)
class ForwardContext:
    """What every attention layer needs for one step."""

    attn: AttentionBackend
    metadata: Any


@dataclass(slots=True)
class DecoderLayerParts:
    """A pre-norm decoder layer (norm, attention, norm, gated MLP, residual adds as in
    `LlamaDecoderLayer.forward`), laid out for a backend that runs its decode steps as one
    native call (contract 4.2). The linears are the modules the backend itself put in place
    after loading (quantized or packed), so it knows their kinds."""

    input_norm: RMSNorm
    post_attention_norm: RMSNorm
    qkv_proj: nn.Module  # q, k, v rows, in that order
    o_proj: nn.Module
    gate_up_proj: nn.Module  # gate rows, then up rows
    down_proj: nn.Module
    act: str
    attention: Attention  # its spec, and the cache the worker bound


class DecoderLayer(nn.Module):
    """The base of decoder layers a backend may fuse (contract 4.2): `parts()` describes the
    layer where it has the plain pre-norm form (None otherwise), and a backend sets `fused`
    to a callable taking `forward`'s arguments that returns its result, or None for steps it
    does not take (then the layer runs op by op)."""

    fused: Callable[..., tuple[torch.Tensor, torch.Tensor] | None] | None = None

    def parts(self) -> DecoderLayerParts | None:
        return None


class RMSNorm(nn.Module):
    """Llama-style: normalise in fp32, cast back, then scale; the math is `LayerOps.rms_norm`.

    `norm(x)` returns the normed x; `norm(x, residual)` adds the residual first and returns
    (normed, new residual), so a backend can fuse the add into the norm's kernel.
    """

    gemma = False

    def __init__(self, dim: int, eps: float, ops: LayerOps):
        super().__init__()
        self.eps = eps
        self.ops = ops
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return self.ops.rms_norm(x, self.weight, self.eps, residual, self.gemma)


class GemmaRMSNorm(RMSNorm):
    """Gemma-style: scale by (1 + w) in fp32, then cast back."""

    gemma = True


def rope_inv_freq(hf_config, head_dim: int, layer_type: str | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and scaling, through transformers for the non-default rope types."""
    params = hf_config.rope_parameters
    if layer_type is not None and layer_type in params:
        params = params[layer_type]
    rope_type = params.get("rope_type", "default")
    if rope_type == "default":
        base = params["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    kwargs = {"layer_type": layer_type} if layer_type is not None else {}
    return ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu", **kwargs)


class RotaryEmbedding(nn.Module):
    """Neox-style rotary embedding: a cos|sin table by position, applied by `LayerOps.rope`."""

    def __init__(self, inv_freq: torch.Tensor, scaling: float, max_positions: int, ops: LayerOps):
        super().__init__()
        self.ops = ops
        positions = torch.arange(max_positions, dtype=torch.float)
        freqs = positions[:, None] * inv_freq.to(positions.device)[None, :]  # transformers' is on the CPU
        self.register_buffer("cos_sin_cache", torch.cat((freqs.cos(), freqs.sin()), dim=-1) * scaling,
                             persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> Rope:
        """The step's rows of the table, looked up once and shared by every layer."""
        return self.ops.rope_rows(self.cos_sin_cache, positions, dtype)


class Attention(nn.Module):
    """The model side of attention; the math and the KV cache belong to the backend."""

    def __init__(self, spec: AttentionSpec):
        super().__init__()
        self.spec = spec
        self.kv_cache = torch.empty(0)  # bound by the worker once allocated

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext):
        return ctx.attn.forward(self.spec, q, k, v, self.kv_cache, ctx.metadata)


class GatedMLP(nn.Module):
    """act(gate) * up, then down; split by intermediate features over tensor-parallel ranks."""

    def __init__(self, hidden: int, intermediate: int, act: str, ops: LayerOps, comm: Communicator):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {act!r} (known: {', '.join(ACTIVATIONS)})")
        what = "intermediate features"
        self.gate_up_proj = ColumnParallelLinear.merged(hidden, [intermediate, intermediate], False, comm, what)
        self.down_proj = RowParallelLinear(intermediate, hidden, False, comm, what)
        self.act = act
        self.ops = ops
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.down_proj(self.ops.act_and_mul(self.gate_up_proj(x), self.act)))


PACKED_MODULES = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def load_weights(model: nn.Module, weights, tie_word_embeddings: bool) -> None:
    """Copy HF-named tensors into the model, packing q/k/v and gate/up on the way.

    A tensor may be one not read yet (`octavo.loader.SafetensorsSlice`): the parallel layers
    (`load_weight`) then read only their rank's shard of it.
    A QuantizedTensor aimed at a linear's weight is attached to the linear instead
    (`quantized_weights`, see octavo.backend.QuantizedTensor; a tied embedding's goes to the
    lm_head too); aimed anywhere else (an embedding) it is dequantized.
    """
    params = dict(model.named_parameters())
    loaded = set()
    for name, source in weights:
        if "rotary_emb.inv_freq" in name or (tie_word_embeddings and name.startswith("lm_head.")):
            continue
        module_name, _, param_name = name.rpartition(".")
        parent, _, leaf = module_name.rpartition(".")
        shard = 0
        if leaf in PACKED_MODULES:
            leaf, shard = PACKED_MODULES[leaf]
            module_name = f"{parent}.{leaf}"
        target = f"{module_name}.{param_name}"
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise KeyError(f"checkpoint tensor {name!r} has no place in {type(model).__name__}") from None
        if isinstance(source, QuantizedTensor):
            if isinstance(module, nn.Linear) and param_name == "weight":
                _attach_quantized(module, shard, source)
                loaded.add(target)
                continue
            if tie_word_embeddings and target == "model.embed_tokens.weight":
                _attach_quantized(model.lm_head, 0, source)
            source = source.dequantize(params[target].dtype)
        if hasattr(module, "load_weight"):
            module.load_weight(param_name, source, shard)
        elif target in params:
            params[target].data.copy_(read_whole(source))
        else:
            raise KeyError(f"checkpoint tensor {name!r} has no place in {type(model).__name__}")
        loaded.add(target)
    missing = set(params) - loaded - ({"lm_head.weight"} if tie_word_embeddings else set())
    if missing:
        raise ValueError(f"checkpoint lacks {sorted(missing)[:5]} ({len(missing)} tensors)")


def _attach_quantized(module: nn.Linear, shard: int, tensor: QuantizedTensor) -> None:
    """Record a shard's quantized weight; shards left None stay in `module.weight`."""
    if getattr(module, "quantized_weights", None) is None:
        module.quantized_weights = [None] * len(getattr(module, "output_sizes", [0]))
    module.quantized_weights[shard] = tensor
