from collections import OrderedDict

import pytest

from benchmarks.belady import belady_hit_rate, oracle_admission_hit_rate
from benchmarks.replay import TierSpec, replay, request_blocks
from benchmarks.synthetic import WORKLOADS, generate
from benchmarks.traces import Request, distinct_blocks, unlimited_hit_rate
from tiers.registry import POLICIES


def reference_lru(requests: list[Request], capacity: int) -> float:
    """LRU with prefix semantics, from scratch: hit the leading cached run, make room for the
    missing blocks oldest first, then every block of the request becomes the newest, its
    first block last. Like the store, eviction takes leaves first, and a block whose
    cached children have all been taken in the same round is a leaf from then on."""
    cache: OrderedDict[int, None] = OrderedDict()  # oldest first
    parent: dict[int, int] = {}
    hits = total = 0
    for r in requests:
        ids = r.block_ids
        hit = next((n for n, i in enumerate(ids) if i not in cache), len(ids))
        hits += hit
        total += len(ids)
        for i in reversed(ids[:hit]):
            cache.move_to_end(i)
        missing = [i for i in ids if i not in cache]
        excess = len(cache) + len(missing) - capacity
        if excess > 0:
            for i in leaves_first(cache, parent)[:excess]:
                del cache[i]
        for p, i in zip((-1, *ids), ids, strict=False):
            parent[i] = p
        for i in reversed(ids):
            cache[i] = None
            cache.move_to_end(i)
    return hits / total


def leaves_first(cache: OrderedDict[int, None], parent: dict[int, int], scan_limit: int = 64) -> list[int]:
    """The store's victim order: blocks without cached children in LRU order, where taking
    a block's last cached child makes it take its turn at once if it was passed over; the
    first ``scan_limit`` blocks passed over stop the scan and come last."""
    children: dict[int, int] = {}
    for i in cache:
        children[parent[i]] = children.get(parent[i], 0) + 1
    order, deferred = [], []
    for candidate in cache:
        if children.get(candidate, 0):
            deferred.append(candidate)
            if len(deferred) == scan_limit:
                break
            continue
        i = candidate
        while True:
            order.append(i)
            i = parent[i]
            children[i] = children.get(i, 0) - 1
            if children[i] or i not in deferred:
                break
            deferred.remove(i)
    return order + deferred


def run(requests: list[Request], capacity: int, policy: str) -> dict:
    return replay(request_blocks(requests, 100), [TierSpec("dram", capacity * 100)], policy)


# Agent contexts reach 171 blocks: at 200 a put needs nearly every leaf and whole tails.
@pytest.mark.parametrize(("name", "capacity"), [("chat", 250), ("chat", 400), ("system-prompts", 250),
                                                ("system-prompts", 400), ("agent", 200), ("agent", 400),
                                                ("mix", 250), ("rag", 250)])
def test_store_lru_matches_reference_lru_exactly(name, capacity):
    requests = generate(name, seed=3, num_requests=300)
    assert run(requests, capacity, "lru")["hit_rate"] == reference_lru(requests, capacity)


def test_hits_are_the_leading_cached_run():
    # [1, 2, 3] is cached; [1, 9, 3] hits only block 1 though 3 is cached.
    requests = [Request(0, (1, 2, 3)), Request(1, (1, 9, 3)), Request(2, (1, 2, 3))]
    out = run(requests, 10, "lru")
    assert (out["hit_blocks"], out["requested_blocks"]) == (1 + 3, 9)
    assert out["tiers"][0]["hits"] == 4


def test_evictions_and_capacity_are_counted():
    requests = [Request(0, (1, 2)), Request(1, (3, 4)), Request(2, (1, 2))]
    out = run(requests, 2, "lru")
    assert out["hit_blocks"] == 0 and out["tiers"][0]["evictions"] == 4
    assert out["tiers"][0]["blocks"] == 2


def test_unlimited_and_belady_on_a_tiny_trace():
    requests = [Request(0, (1, 2)), Request(1, (3,)), Request(2, (1, 2)), Request(3, (3,))]
    assert unlimited_hit_rate(requests) == 3 / 6
    assert belady_hit_rate(requests, 2) == 2 / 6  # keeps 1, 2 for request 2; 3 is lost
    assert belady_hit_rate(requests, 3) == 3 / 6
    assert run(requests, 2, "lru")["hit_rate"] == 1 / 6  # 3 evicts leaf 2, not 1


def test_oracle_admission_evicts_blocks_never_used_again_first():
    requests = [Request(0, (1,)), Request(1, (2,)), Request(2, (1,))]
    assert run(requests, 1, "lru")["hit_rate"] == 0  # 2 pushes out 1
    assert oracle_admission_hit_rate(requests, 1) == 1 / 3  # 2 is never used again: it goes
    assert belady_hit_rate(requests, 1) == 1 / 3


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_belady_is_never_below_any_policy_nor_lru_with_perfect_admission(name):
    requests = generate(name, seed=1, num_requests=400)
    longest = max(len(r.block_ids) for r in requests)
    for fraction in (0.05, 0.2):
        capacity = max(longest, round(fraction * distinct_blocks(requests)))
        bound = belady_hit_rate(requests, capacity)
        assert bound <= unlimited_hit_rate(requests)
        for policy in POLICIES:
            assert run(requests, capacity, policy)["hit_rate"] <= bound, (policy, fraction)
        admit = oracle_admission_hit_rate(requests, capacity)
        assert reference_lru(requests, capacity) <= admit <= bound, fraction


def test_a_request_larger_than_the_store_is_refused():
    with pytest.raises(ValueError, match="more capacity"):
        run([Request(0, (1, 2, 3))], 2, "lru")
