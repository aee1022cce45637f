"""Static shapes for XLA: every step is padded to one of a few sizes, each compiled once."""
from __future__ import annotations


def bucket_sizes(floor: int, limit: int) -> list[int]:
    """Powers of two from `floor` up to `limit`; the last bucket is `limit` itself, so no
    step pads past the engine's own limit. A limit below the floor is the only bucket."""
    sizes = []
    size = floor
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


def bucket_for(sizes: list[int], n: int) -> int:
    """The smallest bucket that holds `n`."""
    for size in sizes:
        if size >= n:
            return size
    raise ValueError(f"{n} exceeds the largest bucket {sizes[-1]}")
