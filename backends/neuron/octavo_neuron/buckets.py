"""The shapes NxD Inference compiles ahead of time, and which of them a step runs.

NxDI compiles one graph per bucket: context encoding (CTE, a prompt or the uncached part of
it) at [active tokens, cached prefix] pairs, token generation (TKG, one new token per
request) at context lengths. A step runs in the smallest bucket that holds it (first fit,
as NxDI's ModelWrapper picks). Every bucket is a whole number of KV blocks, and the largest
of each kind is `max_model_len`: the engine then rejects a longer prompt at admission, and a
request never outgrows the token-generation buckets (generation stops at max_model_len).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from octavo.backend import ConfigError


def power_of_two_buckets(smallest: int, largest: int) -> list[int]:
    """NxDI's default spacing: powers of two from `smallest` up to `largest`, then `largest`."""
    if smallest >= largest:
        return [largest]
    return [2 ** i for i in range(int(math.log2(smallest)), round(math.log2(largest)))] + [largest]


def check_buckets(name: str, buckets: list[int] | None, block_size: int) -> None:
    """Buckets are whole numbers of KV blocks (NxDI addresses the prefix by block)."""
    bad = [b for b in buckets or () if b <= 0 or b % block_size]
    if bad:
        raise ConfigError(f"--{name.replace('_', '-')}: {bad} are not positive multiples of the block size "
                          f"{block_size}")


def _cut(buckets: list[int], max_model_len: int) -> list[int]:
    return sorted({b for b in buckets if b < max_model_len} | {max_model_len})


@dataclass(frozen=True, slots=True)
class BucketPlan:
    context: tuple[int, ...]  # CTE active-token buckets, ascending; the last is max_model_len
    prefix: tuple[int, ...]  # CTE cached-prefix buckets (0 is always compiled too)
    token: tuple[int, ...]  # TKG context-length buckets; the last is max_model_len

    @property
    def max_model_len(self) -> int:
        return self.token[-1]

    @classmethod
    def build(cls, max_model_len: int, block_size: int, context: list[int] | None = None,
              prefix: list[int] | None = None, token: list[int] | None = None) -> BucketPlan:
        """`max_model_len` (the model's or the user's) cut to the largest bucket given and
        to whole blocks; missing lists default to powers of two from 128 (or one block)."""
        for name, buckets in (("context_encoding_buckets", context), ("prefix_buckets", prefix),
                              ("token_generation_buckets", token)):
            check_buckets(name, buckets, block_size)
        limit = min([max_model_len, *(max(b) for b in (context, token) if b)])
        limit -= limit % block_size
        if limit <= 0:
            raise ConfigError(f"max_model_len {max_model_len} holds no whole KV block of {block_size} tokens")
        default = power_of_two_buckets(max(block_size, min(128, limit)), limit)
        context = _cut(context or default, limit)
        return cls(tuple(context), tuple(_cut(prefix or context, limit)), tuple(_cut(token or default, limit)))

    def context_bucket(self, active: int, prefix: int) -> tuple[int, int]:
        """The (active, prefix) CTE graph for `active` new tokens after `prefix` cached ones.
        Active slots left over in the bucket take the end of the prefix (recomputed)."""
        if 256 < active + prefix <= 512 and 512 in self.context:
            return 512, 0  # NxDI's rule: a whole context of 257..512 tokens runs as one prefill
        fits = [a for a in self.context if a >= active]
        if not fits:
            raise ValueError(f"{active} prompt tokens exceed the largest context-encoding bucket "
                             f"({self.context[-1]})")
        left = max(0, prefix - (fits[0] - active))
        return fits[0], min(p for p in (0, *self.prefix) if p >= left)

    def token_bucket(self, position: int) -> int:
        """The TKG graph for a new token at `position` (the bucket holds positions 0..b-1)."""
        fits = [b for b in self.token if b > position]
        if not fits:
            raise ValueError(f"position {position} exceeds the largest token-generation bucket ({self.token[-1]})")
        return fits[0]
