import pytest

from tiers.policy import (
    DEFAULT_POLICY,
    POLICIES,
    DuelingPolicy,
    FIFOPolicy,
    LRUPolicy,
    MultiQueuePolicy,
    SLRUPolicy,
    make_policy,
)
from tiers.store import BlockMeta


def test_lru_order():
    lru = LRUPolicy()
    for k in (b"a", b"b", b"c"):
        lru.insert(k, None)
    lru.touch(b"a", None)
    assert list(lru.candidates()) == [b"b", b"c", b"a"]
    lru.remove(b"c")
    lru.remove(b"unknown")
    assert list(lru.candidates()) == [b"b", b"a"] and len(lru) == 2


def test_registry():
    assert isinstance(make_policy("lru"), LRUPolicy)
    assert type(make_policy("default")) in POLICIES.values()
    with pytest.raises(ValueError, match="unknown"):
        make_policy("fifo-ish")


def meta(hits: int = 0) -> BlockMeta:
    return BlockMeta(parent=b"\0" * 16, depth=0, size=1, hits=hits)


def test_fifo_ignores_touches():
    fifo = FIFOPolicy()
    for k in (b"a", b"b", b"c"):
        fifo.insert(k, meta())
    fifo.touch(b"a", meta(1))
    assert list(fifo.candidates()) == [b"a", b"b", b"c"]


def test_slru_protects_hit_blocks_and_not_put_touches():
    slru = SLRUPolicy(protected_share=0.5)
    m = {k: meta() for k in (b"a", b"b", b"c", b"d")}
    for k, v in m.items():
        slru.insert(k, v)
    slru.touch(b"a", m[b"a"])  # a put's touch: no hit, only recency
    assert list(slru.candidates()) == [b"b", b"c", b"d", b"a"]
    m[b"b"].hits = 1
    slru.touch(b"b", m[b"b"])  # a hit: protected
    assert list(slru.candidates()) == [b"c", b"d", b"a", b"b"]
    for k in (b"c", b"d"):
        m[k].hits = 1
        slru.touch(k, m[k])  # protected holds 2 of 4: b goes back to probation's newest end
    assert list(slru.candidates()) == [b"a", b"b", b"c", b"d"]
    slru.remove(b"c")
    slru.remove(b"b")
    assert list(slru.candidates()) == [b"a", b"d"] and len(slru) == 2


def test_multiqueue_keeps_reused_blocks_longer():
    mq = MultiQueuePolicy()
    m = {k: meta() for k in (b"a", b"b", b"c", b"d")}
    for k, v in m.items():
        mq.insert(k, v)
    m[b"a"].hits = 1  # a was read once: two uses, class 1
    mq.touch(b"a", m[b"a"])
    assert list(mq.candidates()) == [b"b", b"c", b"d", b"a"]
    mq.touch(b"b", m[b"b"])  # recency within class 0
    assert list(mq.candidates()) == [b"c", b"d", b"b", b"a"]
    # The head start is 0.25 x 5 blocks per class: a (touched at clock 4) ranks 5.25, so
    # it outlives e, inserted later (clock 5) but never reused.
    mq.insert(b"e", meta())
    assert list(mq.candidates()) == [b"c", b"d", b"b", b"e", b"a"]


def test_multiqueue_remembers_uses_of_evicted_blocks():
    mq = MultiQueuePolicy()
    a = meta(hits=3)  # inserted after 3 hits elsewhere: only hits since insert count
    mq.insert(b"a", a)
    mq.insert(b"b", meta())
    assert list(mq.candidates()) == [b"a", b"b"]
    a.hits = 4
    mq.touch(b"a", a)  # two uses: class 1
    mq.remove(b"a")  # evicted; its uses are remembered
    mq.insert(b"c", meta())
    mq.insert(b"a", meta())  # back: three uses, still class 1
    assert list(mq.candidates()) == [b"b", b"c", b"a"]
    assert len(mq) == 3


def test_default_policy_is_multiqueue():
    assert DEFAULT_POLICY == "mq" and isinstance(make_policy("default"), MultiQueuePolicy)


def serve(policy, requests: list[list[bytes]], capacity: int) -> int:
    """A cache of ``capacity`` blocks evicting by ``policy``, called as ``TieredStore``
    calls it; each request is a chain of keys from depth 0. Returns the prefix hits."""
    metas: dict[bytes, BlockMeta] = {}
    hits = 0
    for keys in requests:
        hit = 0
        while hit < len(keys) and keys[hit] in metas:
            hit += 1
        hits += hit
        for k in reversed(keys[:hit]):  # get: the hit prefix, deepest first
            metas[k].hits += 1
            policy.touch(k, metas[k])
        new = [k for k in keys if k not in metas]
        while len(metas) + len(new) > capacity:
            victim = next(policy.candidates())
            policy.remove(victim)
            del metas[victim]
        for depth, k in enumerate(keys):  # put: the new blocks, then every block, deepest first
            if k in new:
                metas[k] = BlockMeta(parent=keys[depth - 1] if depth else b"\0" * 16, depth=depth, size=1)
                policy.insert(k, metas[k])
        for k in reversed(keys):
            policy.touch(k, metas[k])
    return hits


def shifting_loops(capacity: int) -> list[list[bytes]]:
    """Working sets of 3/4 of the cache, each looped over three times, then never again:
    LRU hits all but each first pass; mq keeps the last set's reused blocks too long."""
    out = []
    for phase in range(30):
        working = [[(phase * 1000 + i).to_bytes(4, "big")] for i in range(capacity * 3 // 4)]
        out += working * 3
    return out


def hot_set_and_scans(capacity: int) -> list[list[bytes]]:
    """Half a cache of hot blocks, each time followed by a cache-sized scan of new ones:
    LRU loses the hot set to every scan, mq keeps it."""
    hot = [[i.to_bytes(4, "big")] for i in range(capacity // 2)]
    out = []
    for r in range(60):
        out += hot + [[(10**6 + r * capacity + i).to_bytes(4, "big")] for i in range(capacity)]
    return out


def test_duel_follows_lru_on_shifting_loops():
    requests = shifting_loops(16)
    lru, mq = serve(LRUPolicy(), requests, 16), serve(MultiQueuePolicy(), requests, 16)
    duel = DuelingPolicy(limit=8, margin=2)
    hits = serve(duel, requests, 16)
    assert (lru, mq) == (720, 633)
    assert duel.following == "lru" and duel.switches == 1
    assert duel.shadow_hits == {"lru": 720, "mq": 633}  # the shadows replay the same cache
    assert hits == 717  # the first phases, before the switch, go as mq's


def test_duel_follows_mq_on_scans():
    requests = hot_set_and_scans(16)
    duel = DuelingPolicy(limit=8, margin=2)
    hits = serve(duel, requests, 16)
    assert serve(LRUPolicy(), requests, 16) == 0
    assert hits == serve(MultiQueuePolicy(), requests, 16) == 100
    assert duel.following == "mq" and duel.switches == 0


def test_duel_is_deterministic():
    requests = shifting_loops(32) + hot_set_and_scans(32)
    runs = [DuelingPolicy(limit=8, margin=2), DuelingPolicy(limit=8, margin=2)]
    assert serve(runs[0], requests, 32) == serve(runs[1], requests, 32)
    assert list(runs[0].candidates()) == list(runs[1].candidates())
    assert runs[0].shadow_hits == runs[1].shadow_hits and runs[0].switches == runs[1].switches == 2


def test_duel_shadows_count_the_hit_prefix_of_each_request():
    duel = DuelingPolicy()
    # Three blocks at most: r-a-b fills it; x evicts b, the deepest and least recent.
    assert serve(duel, [[b"r", b"a", b"b"], [b"x"], [b"r", b"a", b"b"]], 3) == 2
    assert duel.shadow_hits == {"lru": 2, "mq": 2}  # r and a, as the cache counts them


def test_duel_ignores_touches_of_unknown_keys_and_keeps_both_orders():
    duel = DuelingPolicy(limit=1, margin=0)
    m = {k: meta() for k in (b"a", b"b", b"c")}
    for k, v in m.items():
        duel.insert(k, v)
    m[b"a"].hits = 1
    duel.touch(b"a", m[b"a"])
    duel.touch(b"unknown", meta())
    assert duel.following == "mq" and list(duel.candidates()) == [b"b", b"c", b"a"]
    duel.remove(b"b")
    duel.remove(b"unknown")
    assert len(duel) == 2 and list(duel.candidates()) == [b"c", b"a"]


def test_duel_in_the_store_is_at_least_as_good_as_lru_on_loops():
    from benchmarks.replay import TierSpec, replay
    from tiers.base import Block

    requests = [[Block(k.rjust(16, b"k"), b"\0" * 16, 0, None, 1) for k in r] for r in shifting_loops(16)]
    rates = {p: replay(requests, [TierSpec("dram", 16)], p)["hit_rate"] for p in ("lru", "mq", "duel")}
    assert rates["mq"] < rates["duel"] <= rates["lru"]
