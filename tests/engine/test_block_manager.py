"""The paged pool's prefix cache: sharing, reference counts, LRU reuse, eviction order."""

import pytest

from engine.runtime.block_manager import BlockManager
from engine.runtime.sampling_params import SamplingParams
from engine.runtime.sequence import Sequence
from hashing.keys import BlockHasher, Namespace

BS = 4
HASHER = BlockHasher(Namespace("m", "float32/L2/H2/D8"), BS)


def seq(tokens, rid="r") -> Sequence:
    return Sequence(rid, list(tokens), SamplingParams(), HASHER)


def computed(bm: BlockManager, s: Sequence, cached=()) -> Sequence:
    """Admit ``s`` with its whole prompt computed and its full blocks indexed."""
    assert bm.allocate_slots(s, s.num_tokens - len(cached) * BS, cached)
    s.set_computed(s.num_tokens)
    bm.cache_full_blocks(s, 0, s.num_tokens)
    return s


def test_allocation_takes_blocks_in_order():
    bm = BlockManager(12, BS)
    a = computed(bm, seq(range(10)))  # 3 blocks, the last partial
    assert a.block_table == [0, 1, 2]
    assert bm.num_free_blocks == 9
    assert [b.ref_count for b in bm.blocks[:4]] == [1, 1, 1, 0]


def test_full_blocks_are_indexed_by_chained_keys():
    bm = BlockManager(12, BS)
    computed(bm, seq(range(10)))
    keys = HASHER.keys(list(range(10)))
    assert len(keys) == 2
    assert [bm.cached_block_id(k) for k in keys] == [0, 1]
    assert bm.blocks[2].key is None  # partial block: no key


def test_shared_prefix_is_found_and_reference_counted():
    bm = BlockManager(12, BS)
    computed(bm, seq(range(10), "a"))
    b = seq([*range(8), 50, 51, 52, 53, 54], "b")
    hit = bm.find_cached(b.block_keys(3))
    assert hit == [0, 1]  # block 2 of b differs
    computed(bm, b, hit)
    assert b.block_table == [0, 1, 3, 4]
    assert [bm.blocks[i].ref_count for i in range(5)] == [2, 2, 1, 1, 1]
    assert bm.stats.hit_blocks == 2


def test_lookup_stops_at_first_missing_block():
    bm = BlockManager(12, BS)
    computed(bm, seq(range(12), "a"))
    other = seq([99, *range(1, 12)], "b")  # first block differs: later keys differ too
    assert bm.find_cached(other.block_keys(3)) == []


def test_freed_blocks_keep_content_and_are_hit_again():
    bm = BlockManager(12, BS)
    a = computed(bm, seq(range(10), "a"))
    bm.free(a)
    assert bm.num_free_blocks == 12
    assert a.block_table == []
    b = seq(range(9), "b")
    assert bm.find_cached(b.block_keys(2)) == [0, 1]


def test_free_list_reuses_oldest_and_evicts_leaves_first():
    bm = BlockManager(6, BS)
    a = computed(bm, seq(range(8), "a"))  # blocks 0, 1 (keyed)
    b = computed(bm, seq(range(100, 110), "b"))  # blocks 2, 3 (keyed), 4 (partial)
    bm.free(a)
    bm.free(b)
    # free list, oldest first: 5 | 4 (no key, to the front) | a: 1, 0 | b: 3, 2
    c = seq(range(50, 74), "c")
    assert bm.allocate_slots(c, 20)  # 5 blocks
    assert c.block_table == [4, 5, 1, 0, 3]
    assert bm.stats.evictions == 3
    # b's first block survives; a is gone
    assert bm.find_cached(seq(range(100, 110)).block_keys(2)) == [2]
    assert bm.find_cached(seq(range(8)).block_keys(2)) == []


def test_allocation_is_all_or_nothing():
    bm = BlockManager(3, BS)
    a = seq(range(13), "a")  # needs 4 blocks
    assert not bm.allocate_slots(a, 13)
    assert a.block_table == []
    assert bm.num_free_blocks == 3
    assert bm.stats.allocation_failures == 1


def test_hit_on_free_block_counts_against_free_pages():
    bm = BlockManager(3, BS)
    a = computed(bm, seq(range(8), "a"))
    bm.free(a)
    b = seq([*range(8), 1, 2, 3, 4, 5], "b")  # 2 hit blocks (free) + 2 new = 4 > 3
    hit = bm.find_cached(b.block_keys(3))
    assert hit == [0, 1]
    assert bm.num_blocks_needed(b, 5, hit) == 4
    assert not bm.allocate_slots(b, 5, hit)
    assert bm.allocate_slots(b, 4, hit)  # 2 hit + 1 new
    assert b.block_table == [0, 1, 2]


def test_duplicate_content_is_indexed_once():
    bm = BlockManager(12, BS)
    computed(bm, seq(range(8), "a"))
    b = computed(bm, seq(range(8), "b"))  # computed again without using the hit
    assert b.block_table == [2, 3]
    assert bm.blocks[2].key is None
    bm.free(b)
    c = seq(range(50, 58), "c")
    assert bm.allocate_slots(c, 8)
    assert c.block_table == [2, 3]  # unkeyed pages are reused first
    assert bm.stats.evictions == 0


def test_prefix_caching_off_finds_nothing():
    bm = BlockManager(12, BS, enable_prefix_caching=False)
    computed(bm, seq(range(8), "a"))
    assert bm.find_cached(seq(range(8)).block_keys(2)) == []


def test_reserved_pages_are_hit_only_once_committed():
    bm = BlockManager(4, BS)
    bm.free(computed(bm, seq(range(4), "a")))  # block 0, cached and free
    keys = seq(range(12), "b").block_keys(3)
    pages = bm.reserve(3)
    assert pages == [1, 2, 3] and bm.num_free_blocks == 1  # unkeyed pages go first
    assert bm.find_cached(keys) == [0]  # key 0 was already here; the rest are not yet
    bm.commit(pages, keys)  # key 0 keeps its page; the reserved one for it is released
    assert bm.find_cached(keys) == [0, 2, 3]
    assert bm.num_free_blocks == 4  # committed pages stay free until a request takes them
    assert bm.reserve(9) == [1, 0, 3, 2]  # as many as are free: the released one, then the
    # oldest, then the committed blocks deepest first (a prefix is evicted last)
    assert bm.find_cached(keys) == [] and bm.stats.evictions == 3


def test_released_pages_go_back_unkeyed():
    bm = BlockManager(3, BS)
    pages = bm.reserve(2)
    bm.release(pages)
    assert bm.num_free_blocks == 3 and all(bm.blocks[b].key is None for b in pages)


def test_engine_serves_a_prefix_written_from_bytes():
    """The connector's path: pages read as bytes from one engine, written into another."""
    from tests.engine.tiny import tiny_engine

    prompt = [5, 9, 13, 2, 7, 1, 30, 4, 11]
    params = SamplingParams(temperature=0, max_tokens=4, logprobs=0)
    source = tiny_engine()
    cold = source.generate([prompt], params)[0]
    keys = source.hasher().keys(prompt)
    payloads = [bytes(source.kv_cache.page(source.block_manager.cached_block_id(k)).numpy()) for k in keys]
    target = tiny_engine()
    block_ids = target.block_manager.reserve(len(keys))
    for block_id, payload in zip(block_ids, payloads, strict=True):
        target.kv_cache.write_page(block_id, payload)
    target.block_manager.commit(block_ids, keys)
    warm = target.generate([prompt], params)[0]
    assert warm.num_cached_tokens == 8
    assert warm.token_ids == cold.token_ids
    warm_lp = [lp[t] for lp, t in zip(warm.logprobs, warm.token_ids, strict=True)]
    cold_lp = [lp[t] for lp, t in zip(cold.logprobs, cold.token_ids, strict=True)]
    assert warm_lp == pytest.approx(cold_lp, abs=1e-5)
