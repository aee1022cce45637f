"""Tensor-parallel layers: Megatron-LM's split, as vLLM's.

Column-parallel linears split their output features across the ranks (q/k/v by attention
heads, gate/up by intermediate features) and need no communication: the layer after them
consumes the split (attention per head, the activation per feature). Row-parallel linears
split their input features the same way, so each rank holds partial sums of the full output,
which the layer using them all-reduces. The vocabulary splits by rows in the embedding
(all-reduced: each token's row lives on one rank) and in the LM head (its logits gathered to
rank 0, which samples). Norms and rotary tables are replicated. With fewer key/value heads
than ranks, each rank keeps the one its query heads read (replicas, as vLLM's).

The linears are plain `nn.Linear`s holding this rank's shard, with the rule that cuts a
checkpoint tensor down to it (`load_weight`); the communication stays with the layer that
calls them. So a backend that swaps the models' linears for its own weight format (pre-packed,
quantized) swaps shards exactly as it swaps whole weights. At one rank every split is the
whole tensor and every collective the identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from octavo.backend import Communicator, ConfigError

# A checkpoint tensor, or one not read yet (octavo.loader.SafetensorsSlice): both can `narrow`.
WeightSource = torch.Tensor


def divide(total: int, parts: int, what: str) -> int:
    if total % parts:
        raise ConfigError(f"tensor_parallel_size {parts} does not divide the model's {total} {what}")
    return total // parts


def read_whole(source) -> torch.Tensor:
    """The whole tensor of a checkpoint source."""
    return source if isinstance(source, torch.Tensor) else source.narrow(0, 0, source.shape[0])


@dataclass(frozen=True, slots=True)
class HeadSplit:
    """This rank's attention heads: `num_heads` query heads from `head_start`, `num_kv_heads`
    key/value heads from `kv_head_start` (the same one on several ranks when the model has
    fewer key/value heads than there are ranks)."""

    num_heads: int
    head_start: int
    num_kv_heads: int
    kv_head_start: int

    @classmethod
    def of(cls, num_heads: int, num_kv_heads: int, rank: int, world: int) -> HeadSplit:
        heads = divide(num_heads, world, "attention heads")
        if num_kv_heads >= world:
            kv_heads = divide(num_kv_heads, world, "key/value heads")
            return cls(heads, rank * heads, kv_heads, rank * kv_heads)
        divide(world, num_kv_heads, "key/value heads (replicated: the ranks must be a multiple of them)")
        return cls(heads, rank * heads, 1, rank * num_kv_heads // world)


class ColumnParallelLinear(nn.Linear):
    """This rank's output features of one or more projections of the same input, in one
    matmul (q/k/v, gate/up). `shards[i]` = (first row, rows) of projection i's checkpoint
    tensor that this rank holds; `output_sizes[i]` = its rows here."""

    def __init__(self, in_features: int, shards: list[tuple[int, int]], bias: bool):
        super().__init__(in_features, sum(rows for _, rows in shards), bias=bias)
        self.shards = shards
        self.output_sizes = [rows for _, rows in shards]

    @classmethod
    def merged(cls, in_features: int, output_sizes: list[int], bias: bool, comm: Communicator,
               what: str) -> ColumnParallelLinear:
        """Each projection split evenly: rank r holds the r-th slice of its rows."""
        local = [divide(size, comm.world_size, what) for size in output_sizes]
        return cls(in_features, [(comm.rank * rows, rows) for rows in local], bias)

    @classmethod
    def qkv(cls, in_features: int, heads: HeadSplit, head_dim: int, bias: bool) -> ColumnParallelLinear:
        q = (heads.head_start * head_dim, heads.num_heads * head_dim)
        kv = (heads.kv_head_start * head_dim, heads.num_kv_heads * head_dim)
        return cls(in_features, [q, kv, kv], bias)

    def load_weight(self, param_name: str, source: WeightSource, shard: int = 0) -> None:
        start, rows = self.shards[shard]
        offset = sum(self.output_sizes[:shard])
        getattr(self, param_name).data[offset:offset + rows].copy_(source.narrow(0, start, rows))


class RowParallelLinear(nn.Linear):
    """This rank's input features: its output is a partial sum, which the caller all-reduces
    (`comm.all_reduce(linear(x))`). The bias is added once, on rank 0."""

    def __init__(self, in_features: int, out_features: int, bias: bool, comm: Communicator, what: str):
        local = divide(in_features, comm.world_size, what)
        super().__init__(local, out_features, bias=bias and comm.rank == 0)
        self.input_start = comm.rank * local

    def load_weight(self, param_name: str, source: WeightSource, shard: int = 0) -> None:
        if param_name == "weight":
            self.weight.data.copy_(source.narrow(1, self.input_start, self.in_features))
        elif self.bias is not None:
            self.bias.data.copy_(read_whole(source))


class VocabShard:
    """Rows [vocab_start, vocab_end) of a vocabulary-sized weight, padded to `rows` (the
    vocabulary rounded up to a multiple of the ranks)."""

    def init_vocab(self, vocab_size: int, comm: Communicator) -> int:
        self.rows = -(-vocab_size // comm.world_size)
        self.vocab_start = comm.rank * self.rows
        self.vocab_end = min(vocab_size, self.vocab_start + self.rows)
        return self.rows

    def load_weight(self, param_name: str, source: WeightSource, shard: int = 0) -> None:
        n = self.vocab_end - self.vocab_start
        self.weight.data[:n].copy_(source.narrow(0, self.vocab_start, n))
        self.weight.data[n:].zero_()


class VocabParallelEmbedding(VocabShard, nn.Module):
    """Token embeddings, this rank's rows of the vocabulary; tokens outside them embed to
    zero, and the all-reduce adds the one rank that has each."""

    def __init__(self, vocab_size: int, hidden_size: int, comm: Communicator):
        super().__init__()
        self.comm = comm
        self.weight = nn.Parameter(torch.empty(self.init_vocab(vocab_size, comm), hidden_size))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.comm.world_size == 1:
            return F.embedding(input_ids, self.weight)
        inside = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        x = F.embedding((input_ids - self.vocab_start) * inside, self.weight)
        return self.comm.all_reduce(x.mul_(inside.unsqueeze(-1).to(x.dtype)))


class ParallelLMHead(VocabShard, nn.Linear):
    """The output projection, this rank's rows of the vocabulary (`logits` gathers them)."""

    def __init__(self, hidden_size: int, vocab_size: int, comm: Communicator):
        nn.Linear.__init__(self, hidden_size, self.init_vocab(vocab_size, comm), bias=False)


def check_tensor_parallel(hf_config, world_size: int) -> None:
    """Raise ConfigError where the model does not split over `world_size` ranks."""
    HeadSplit.of(hf_config.num_attention_heads, hf_config.num_key_value_heads, 0, world_size)
    divide(hf_config.intermediate_size, world_size, "intermediate features")


def gather_logits(lm_head: nn.Module, hidden: torch.Tensor, comm: Communicator,
                  vocab_size: int) -> torch.Tensor | None:
    """fp32 logits [T, vocab_size] on rank 0; None on the other ranks (they do not sample).

    `lm_head` may be a backend's swapped-in module: the gather stays out of it."""
    logits = comm.gather(lm_head(hidden), dim=-1)
    return None if logits is None else logits[..., :vocab_size].float()
