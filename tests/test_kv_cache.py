"""Block pool and prefix cache bookkeeping."""
from octavo.kv_cache import KVCacheManager
from octavo.request import Request
from octavo.sampling_params import SamplingParams


def request(rid, tokens):
    return Request(rid, tokens, SamplingParams(), max_tokens=8)


def test_full_blocks_are_cached_and_shared():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = request("a", list(range(10)))
    assert kv.allocate_slots(a, 10)
    assert len(kv.block_ids("a")) == 3 and len(kv.pool.cached) == 2
    b = request("b", list(range(8)) + [99, 98, 97])
    hits = kv.get_computed_blocks(b)
    assert [h.block_id for h in hits] == kv.block_ids("a")[:2]
    assert kv.allocate_slots(b, 3, hits)
    assert kv.num_free_blocks == 8 - 4
    kv.free(a)
    kv.free(b)
    assert kv.num_free_blocks == 8 and len(kv.pool.cached) == 2


def test_at_least_one_token_is_left_to_compute():
    kv = KVCacheManager(num_blocks=8, block_size=4)
    a = request("a", list(range(8)))
    kv.allocate_slots(a, 8)
    kv.free(a)
    assert len(kv.get_computed_blocks(request("b", list(range(8))))) == 1


def test_eviction_takes_least_recently_freed_and_tail_first():
    kv = KVCacheManager(num_blocks=4, block_size=2)
    a = request("a", [1, 2, 3, 4, 5, 6])
    kv.allocate_slots(a, 6)
    ids = kv.block_ids("a")
    kv.free(a)
    assert list(kv.pool.free)[-3:] == ids[::-1]  # the tail is evicted before the prefix
    b = request("b", [9, 9, 9, 9])
    kv.allocate_slots(b, 4)  # takes the never-used block and the old tail
    assert kv.pool.cached.get(kv._hashes(a)[2]) is None
    assert len(kv.get_computed_blocks(request("c", [1, 2, 3, 4, 7]))) == 2


def test_allocation_fails_cleanly_when_blocks_run_out():
    kv = KVCacheManager(num_blocks=2, block_size=4)
    a = request("a", list(range(12)))
    assert not kv.allocate_slots(a, 12)
    assert kv.num_free_blocks == 2 and kv.block_ids("a") == []


def test_prefix_caching_off_caches_nothing():
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_caching=False)
    a = request("a", list(range(10)))
    kv.allocate_slots(a, 10)
    kv.free(a)
    assert not kv.pool.cached and kv.get_computed_blocks(request("b", list(range(10)))) == []
