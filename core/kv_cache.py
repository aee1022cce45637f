"""Paged KV-cache bookkeeping: block ids, reference counts and the prefix cache.

The manager never touches device memory; a block id is an index the backend maps to its
own layout. Full blocks are registered under a chained hash of their tokens, so a later
request with the same prefix reuses them. A block whose reference count drops to zero
stays cached in the free queue (least recently freed first) until it is needed again,
when it is evicted.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from octavo.config import ConfigError, EngineConfig
from octavo.request import Request


def num_blocks_for_memory(config: EngineConfig, max_model_len: int, block_size: int, bytes_per_block: int,
                          default_memory: int) -> int:
    """KV blocks that `--kv-cache-memory` holds; unset, `default_memory` bytes at most and no more
    than every sequence at full length could use."""
    memory = config.kv_cache_memory
    if memory is None:
        full = config.max_num_seqs * -(-max_model_len // block_size) * bytes_per_block
        memory = min(default_memory, full)
    blocks = memory // bytes_per_block
    if blocks < 1:
        raise ConfigError(f"kv_cache_memory {memory} bytes holds no block of {block_size} tokens "
                          f"({bytes_per_block} bytes each)")
    return int(blocks)


class BlockHash(NamedTuple):
    """Exact key of a full block: its tokens plus the hash of everything before it."""

    parent: int
    token_ids: tuple[int, ...]


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None


class BlockPool:
    def __init__(self, num_blocks: int):
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # Free blocks in eviction order; cached ones among them can still be hit.
        self.free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self.cached: dict[BlockHash, KVBlock] = {}

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self, n: int) -> list[KVBlock]:
        out = []
        for _ in range(n):
            _, block = self.free.popitem(last=False)
            if block.block_hash is not None:
                del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: list[KVBlock]) -> None:
        """Take a reference on cache hits, pulling them out of the free queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self.free[block.block_id]
            block.ref_cnt += 1

    def release(self, blocks: list[KVBlock]) -> None:
        for block in blocks:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free[block.block_id] = block

    def register(self, block: KVBlock, block_hash: BlockHash) -> None:
        if block.block_hash is None and block_hash not in self.cached:
            block.block_hash = block_hash
            self.cached[block_hash] = block

    def uncache(self, block: KVBlock) -> None:
        if block.block_hash is not None:
            del self.cached[block.block_hash]
            block.block_hash = None

    def evict_all_cached(self) -> None:
        for block in self.cached.values():
            block.block_hash = None
        self.cached.clear()


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks)
        self.req_blocks: dict[str, list[KVBlock]] = {}
        self.req_hashes: dict[str, list[BlockHash]] = {}
        self.num_registered: dict[str, int] = {}  # leading blocks of each request already cached
        self.prefix_queries = 0  # prompt tokens looked up
        self.prefix_hits = 0  # of which found cached

    # -------------------------------------------------------------- queries

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.pool.num_free / self.num_blocks

    def block_ids(self, request_id: str, start: int = 0) -> list[int]:
        """The request's block ids from its `start`-th block on."""
        return [b.block_id for b in self.req_blocks.get(request_id, ())[start:]]

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -------------------------------------------------------------- prefix cache

    def _hashes(self, request: Request) -> list[BlockHash]:
        """Hashes of the request's full blocks, extended as tokens arrive."""
        hashes = self.req_hashes.setdefault(request.request_id, [])
        bs = self.block_size
        tokens = request.token_ids
        while (len(hashes) + 1) * bs <= len(tokens):
            i = len(hashes)
            parent = hash(hashes[-1]) if hashes else 0
            hashes.append(BlockHash(parent, tuple(tokens[i * bs:(i + 1) * bs])))
        return hashes

    def get_computed_blocks(self, request: Request) -> list[KVBlock]:
        """The longest cached prefix of the request; at least one token is left to compute."""
        if not self.enable_caching or request.sampling_params.prompt_logprobs is not None:
            return []
        hashes = self._hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        hits = []
        for block_hash in hashes[:max_blocks]:
            block = self.pool.cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        if request.num_cached_tokens < 0:  # count each request's first lookup only
            self.prefix_queries += request.num_tokens
            self.prefix_hits += len(hits) * self.block_size
        return hits

    # -------------------------------------------------------------- allocation

    def allocate_slots(self, request: Request, num_new_tokens: int,
                       computed_blocks: list[KVBlock] = ()) -> bool:
        """Make room for `num_new_tokens` more tokens; False (and no change) if blocks run out."""
        blocks = self.req_blocks.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(computed_blocks) * self.block_size
        total = num_computed + num_new_tokens
        num_new_blocks = self.blocks_needed(total) - len(blocks) - len(computed_blocks)
        evictable_hits = sum(1 for b in computed_blocks if b.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free - evictable_hits:
            return False
        if computed_blocks:
            self.pool.touch(computed_blocks)
            blocks.extend(computed_blocks)
        if num_new_blocks > 0:
            blocks.extend(self.pool.allocate(num_new_blocks))
        if self.enable_caching:
            self._cache_full_blocks(request, blocks, total)
        return True

    def _cache_full_blocks(self, request: Request, blocks: list[KVBlock], num_tokens: int) -> None:
        # The tokens are computed by the end of this step; a request scheduled later in the
        # same step may already hit them, since every layer writes K/V before attending.
        num_full = min(num_tokens, request.num_tokens) // self.block_size
        start = self.num_registered.get(request.request_id, 0)
        if num_full <= start:
            return
        hashes = self._hashes(request)
        for i in range(start, num_full):
            if blocks[i].block_hash is None:
                self.pool.register(blocks[i], hashes[i])
        self.num_registered[request.request_id] = num_full

    def uncache_uncomputed(self, request: Request) -> None:
        """Take the request's blocks past its computed tokens out of the prefix cache. They were
        registered when scheduled, as computed by the end of the step; the step failed, so no
        later request may hit them."""
        first = request.num_computed_tokens // self.block_size
        for block in self.req_blocks.get(request.request_id, [])[first:]:
            self.pool.uncache(block)
        if request.request_id in self.num_registered:
            self.num_registered[request.request_id] = min(self.num_registered[request.request_id], first)

    def free(self, request: Request) -> None:
        """Release the request's blocks; the tail goes first so the common prefix stays cached."""
        blocks = self.req_blocks.pop(request.request_id, [])
        self.pool.release(reversed(blocks))
        self.req_hashes.pop(request.request_id, None)
        self.num_registered.pop(request.request_id, None)

    def reset_prefix_cache(self) -> None:
        self.pool.evict_all_cached()
