import math
from collections import Counter

import pytest

from hashing.ring import HashRing

KEYS = [f"conversation-{i}" for i in range(5000)]


def test_owner_is_stable_and_total():
    ring = HashRing([f"r{i}" for i in range(5)])
    owners = [ring.owner(k) for k in KEYS]
    assert owners == [HashRing([f"r{i}" for i in range(5)]).owner(k) for k in KEYS]
    share = Counter(owners)
    assert set(share) == set(ring.nodes)
    assert max(share.values()) < 2 * len(KEYS) / 5  # virtual nodes spread the keys


def test_adding_one_node_to_ten_moves_about_a_tenth():
    ring = HashRing([f"r{i}" for i in range(10)])
    before = {k: ring.owner(k) for k in KEYS}
    ring.add_node("r10")
    moved = [k for k in KEYS if ring.owner(k) != before[k]]
    assert all(ring.owner(k) == "r10" for k in moved)  # keys only move to the new node
    assert 0.05 < len(moved) / len(KEYS) < 0.15


def test_removing_a_node_moves_only_its_keys():
    ring = HashRing([f"r{i}" for i in range(4)])
    before = {k: ring.owner(k) for k in KEYS}
    ring.remove_node("r2")
    for k in KEYS:
        if before[k] != "r2":
            assert ring.owner(k) == before[k]
        else:
            assert ring.owner(k) != "r2"


def test_walk_lists_each_node_once_owner_first():
    ring = HashRing(["a", "b", "c"])
    for k in KEYS[:50]:
        order = list(ring.walk(k))
        assert sorted(order) == ["a", "b", "c"]
        assert order[0] == ring.owner(k)


def test_bounded_loads_never_exceed_the_bound():
    ring = HashRing([f"r{i}" for i in range(8)], epsilon=0.25)
    # A skewed key stream: most keys are one hot conversation.
    stream = ["hot"] * 300 + KEYS[:300]
    for n, k in enumerate(stream, start=1):
        ring.acquire(k)
        assert max(ring.loads().values()) <= math.ceil(1.25 * n / 8)
    assert sum(ring.loads().values()) == len(stream)


def test_bounded_load_keeps_owner_when_below_bound_and_release_uncounts():
    ring = HashRing(["a", "b", "c", "d"])
    node = ring.acquire("k")
    assert node == ring.owner("k")
    ring.release(node)
    assert sum(ring.loads().values()) == 0


def test_acquire_with_exclusions_and_empty_ring():
    ring = HashRing(["a", "b"])
    owner = ring.owner("k")
    other = ring.acquire("k", exclude=frozenset({owner}))
    assert other not in (owner, None)
    assert ring.acquire("k", exclude=frozenset({"a", "b"})) is None
    assert HashRing().acquire("k") is None
    assert HashRing().owner("k") is None


def test_bad_settings():
    with pytest.raises(ValueError, match="vnodes"):
        HashRing(vnodes=0)
    with pytest.raises(ValueError, match="epsilon"):
        HashRing(epsilon=0)
