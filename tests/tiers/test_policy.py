import pytest

from tiers.adaptive import AdaptivePolicy, BimodalPolicy, ConversationDepth, HotPolicy, ReuseByShape
from tiers.policy import FIFOPolicy, LRUPolicy, MultiQueuePolicy, SLRUPolicy, resident_prefix
from tiers.registry import DEFAULT_POLICY, POLICIES, make_policy
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


def test_default_policy_is_the_multi_queue_without_simulation():
    assert DEFAULT_POLICY == "mq" and type(make_policy("default")) is MultiQueuePolicy
    assert not make_policy("default").learns


def serve(policy, requests: list[list[bytes]], capacity: int) -> int:
    """A cache of ``capacity`` blocks evicting by ``policy``, called as ``TieredStore``
    calls it; each request is a chain of keys from depth 0. Returns the prefix hits."""
    metas: dict[bytes, BlockMeta] = {}
    hits = 0
    for keys in requests:
        policy.observe(keys)  # the lookup
        policy.learn()  # as the store does with ``learn_inline``
        hit = resident_prefix(keys, metas)
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


def test_adaptive_follows_lru_on_shifting_loops():
    requests = shifting_loops(16)
    lru, mq = serve(LRUPolicy(), requests, 16), serve(MultiQueuePolicy(history=16), requests, 16)
    adaptive = AdaptivePolicy()
    hits = serve(adaptive, [*requests, []], 16)  # the empty request replays the last one
    assert (lru, mq) == (720, 633)
    assert adaptive.following == 0.0 and adaptive.switches == 1
    assert adaptive.shadow_hits[0.0] == lru  # the LRU shadow replays the same cache
    assert mq < hits < lru  # the first phases, before the switch, go as multi-queue's


def test_adaptive_follows_multi_queue_on_scans():
    requests = hot_set_and_scans(16)
    adaptive = AdaptivePolicy(bimodal=False)
    hits = serve(adaptive, requests, 16)
    assert serve(LRUPolicy(), requests, 16) == 0
    assert hits == serve(MultiQueuePolicy(history=16), requests, 16) == 100
    assert adaptive.following > 0 and adaptive.switches == 0


def test_bimodal_puts_new_and_returning_chains_at_the_evictable_end():
    bimodal = BimodalPolicy(every=10**9)  # the lottery never lets one through
    m = {k: meta() for k in (b"a", b"b", b"x", b"y", b"z")}

    def request(keys: list[bytes]) -> None:  # as the store calls it: lookup, puts, put's touches
        bimodal.observe(keys)
        for k in keys:
            if k not in list(bimodal.candidates()):
                bimodal.insert(k, m[k])
        for k in reversed(keys):
            bimodal.touch(k, m[k])

    request([b"a"])  # a new chain: the evictable end, where it is alone
    request([b"a", b"b"])  # extends a resident chain cleanly: the fresh end, and its put refreshes a
    assert list(bimodal.candidates()) == [b"b", b"a"]
    request([b"x"])
    request([b"y"])  # new chains go first, the newest first
    assert list(bimodal.candidates()) == [b"y", b"x", b"b", b"a"]
    request([b"a", b"b", b"z"])  # clean again: z at the fresh end
    bimodal.remove(b"z")
    request([b"a", b"b", b"z"])  # z comes back after eviction: the evictable end
    assert next(bimodal.candidates()) == b"z"
    m[b"x"].hits = 1
    bimodal.touch(b"x", m[b"x"])  # a hit moves a block to the fresh end whatever the request
    assert list(bimodal.candidates())[-1] == b"x"
    bimodal.remove(b"unknown")
    assert len(bimodal) == 5


def test_bimodal_lottery_lets_one_new_chain_in_every_so_often():
    runs = []
    for _ in range(2):
        bimodal = BimodalPolicy()  # one in 8, seeded
        for i in range(800):
            bimodal.observe([b"n%d" % i])
            bimodal.insert(b"n%d" % i, meta())
        runs.append(list(bimodal.candidates()))
    fresh = runs[0][runs[0].index(b"n0"):]  # n0 went in first; the lucky ones went in after it
    assert 60 < len(fresh) < 140
    assert runs[0] == runs[1]  # the same draws each time


def test_adaptive_follows_bimodal_when_the_hot_set_is_lost_to_every_scan():
    """LRU loses the hot set to every scan and mq keeps it only from its protected class;
    the bimodal order lets scans pass at the evictable end, so adaptive follows it and,
    once the hot set is back in the real cache (the lottery lets it in), beats both."""
    requests = hot_set_and_scans(16)
    adaptive = AdaptivePolicy()
    hits = serve(adaptive, requests, 16)
    mq = serve(MultiQueuePolicy(history=16), requests, 16)
    assert adaptive.following == AdaptivePolicy.BIMODAL
    assert adaptive.shadow_hits[AdaptivePolicy.BIMODAL] > adaptive.shadow_hits[2.0] == mq == 100
    assert hits > 3 * mq


def test_adaptive_is_deterministic():
    requests = shifting_loops(32) + hot_set_and_scans(32)
    runs = [AdaptivePolicy(), AdaptivePolicy()]
    assert serve(runs[0], requests, 32) == serve(runs[1], requests, 32)
    assert list(runs[0].candidates()) == list(runs[1].candidates())
    assert runs[0].shadow_hits == runs[1].shadow_hits and runs[0].switches == runs[1].switches > 0


def test_adaptive_shadows_count_the_hit_prefix_of_each_request():
    adaptive = AdaptivePolicy(caps=(0.0, 2.0))
    # Three blocks at most: r-a-b fills it; x evicts b, the deepest and least recent. A
    # request is replayed in the shadows when the next is observed: the empty one last.
    assert serve(adaptive, [[b"r", b"a", b"b"], [b"x"], [b"r", b"a", b"b"], []], 3) == 2
    # r and a, as the cache counts them
    assert adaptive.shadow_hits == {0.0: 2, 2.0: 2, "bimodal": 2, "hot": 2, "selective": 2}


def test_adaptive_ignores_unknown_keys_and_orders_by_the_followed_cap():
    adaptive = AdaptivePolicy()
    m = {k: meta() for k in (b"a", b"b", b"c")}
    for k, v in m.items():
        adaptive.insert(k, v)
    m[b"a"].hits = 1
    adaptive.touch(b"a", m[b"a"])
    adaptive.touch(b"unknown", meta())
    assert adaptive.following == 2.0 and list(adaptive.candidates()) == [b"b", b"c", b"a"]
    adaptive.remove(b"b")
    adaptive.remove(b"unknown")
    assert len(adaptive) == 2 and list(adaptive.candidates()) == [b"c", b"a"]
    with pytest.raises(ValueError, match="offset cap"):
        AdaptivePolicy(caps=())


def test_multi_queue_order_with_a_zero_cap_is_recency():
    mq = MultiQueuePolicy()
    m = {k: meta() for k in (b"a", b"b", b"c")}
    for k, v in m.items():
        mq.insert(k, v)
    m[b"a"].hits = 3  # class 2: protected by the offset, not without it
    mq.touch(b"a", m[b"a"])
    mq.insert(b"d", meta())
    assert list(mq.candidates()) == [b"b", b"c", b"d", b"a"]
    assert list(mq.order(0.0)) == [b"b", b"a", b"c", b"d"]  # by last-touch clock; ties by key


def test_adaptive_in_the_store_sees_requests_through_lookup_and_beats_mq_on_loops():
    from benchmarks.replay import TierSpec, replay
    from tiers.base import Block

    requests = [[Block(k.rjust(16, b"k"), b"\0" * 16, 0, None, 1) for k in r] for r in shifting_loops(16)]
    rates = {p: replay(requests, [TierSpec("dram", 16)], p)["hit_rate"] for p in ("lru", "mq", "adaptive")}
    assert rates["mq"] < rates["adaptive"] <= rates["lru"]


def test_reuse_by_shape_calls_a_shape_cold_once_it_has_learned_it_seldom_comes_back():
    model = ReuseByShape()
    burst, single = ReuseByShape.shape(0, 8), ReuseByShape.shape(0, 1)
    assert burst != single and ReuseByShape.shape(3, 8) != burst  # resident blocks count too
    assert ReuseByShape.shape(10**6, 10**6) < ReuseByShape.BUCKETS**2  # long requests share the top bucket
    for _ in range(110):
        assert not any([model.new_block(burst) for _ in range(8)])
        assert not model.new_block(single)
        model.reused(single)
    assert not model.cold(burst)  # 990 blocks: too few to judge
    assert [model.new_block(burst) for _ in range(20)] == [False] * 9 + [True] * 11  # from the 1,000th
    assert model.cold(burst) and not model.cold(single)
    for _ in range(5000):  # the workload turns: the counts halve, so the model follows
        model.new_block(burst)
        model.reused(burst)
    assert not model.cold(burst)


def returns_among_wide(rounds: int, back: int, width: int, every: int = 0,
                       wide_back: int = 0) -> list[list[bytes]]:
    """Each round: a new one-block request, which comes back ``back`` rounds later, and a
    new ``width``-block request, which comes back ``wide_back`` rounds later one round in
    ``every`` (never, for 0)."""
    out = []
    for r in range(rounds):
        out.append([b"one-%d" % r])
        if r >= back:
            out.append([b"one-%d" % (r - back)])
        out.append([b"wide-%d-%d" % (r, i) for i in range(width)])
        if every and r >= wide_back and r % every == 0:
            out.append([b"wide-%d-%d" % (r - wide_back, i) for i in range(width)])
    return out


def test_multiqueue_admission_sends_blocks_of_cold_shapes_first():
    requests = returns_among_wide(400, 8, 8)  # 72 blocks go in between a block's two uses
    lru = serve(LRUPolicy(), requests, 64)
    plain = serve(MultiQueuePolicy(history=4), requests, 64)
    admitting = MultiQueuePolicy(history=4, admission=ReuseByShape())
    learned = serve(admitting, requests, 64)
    assert lru == plain == 0  # every return comes after 72 other blocks: LRU and mq lose all
    assert learned >= 280  # of 392: each one once 1,000 blocks are counted (112 rounds in)
    order = list(admitting.candidates())
    assert {b"one-%d" % r for r in range(392, 400)} <= set(order)  # all 8 awaiting their return
    assert order[0].startswith(b"wide")


def test_hot_protects_only_blocks_used_eight_times_or_more():
    hot, mq = HotPolicy(), MultiQueuePolicy()
    m = {k: meta() for k in (b"x", b"b", b"c", b"d")}
    m[b"x"].hits = 3  # 4 uses: class 2, which the multi-queue protects
    m[b"b"].hits = 7  # 8 uses: the top class
    for policy in (hot, mq):
        for k in (b"x", b"b", b"c", b"d"):
            policy.insert(k, meta())
            policy.touch(k, m[k])
    assert list(hot.candidates()) == [b"x", b"c", b"d", b"b"]  # by recency, but for b
    assert list(mq.candidates()) == [b"c", b"x", b"d", b"b"]  # x: 0.25 x 4 blocks x 2 classes later


@pytest.mark.parametrize("capacity", [16, 24])
def test_adaptive_races_selective_admission_and_follows_it_where_it_leads(capacity):
    # The 4-block requests come back one time in four, 20 rounds later (100 blocks on):
    # less often than the average block (0.4) but more than half as often, so the
    # multi-queue's admission keeps them and the selective one (twice the average) does not.
    requests = returns_among_wide(1000, 6, 4, every=4, wide_back=20)
    adaptive, without = AdaptivePolicy(), AdaptivePolicy(selective=None)
    hits = {name: serve(policy, requests, capacity)
            for name, policy in (("lru", LRUPolicy()), ("without", without), ("adaptive", adaptive))}
    # 30 blocks go in between a one-block request's two uses: LRU and the multi-queue
    # orders lose every one, the bimodal order keeps a quarter; selective admission
    # evicts the 4-block requests first and keeps nearly all
    assert hits["lru"] == 0 and hits["without"] < 300
    assert adaptive.following == AdaptivePolicy.SELECTIVE
    assert adaptive.shadow_hits[AdaptivePolicy.SELECTIVE] > 5 * adaptive.shadow_hits[2.0]
    # the real cache matches its shadow (at 16 it did not while the real multi-queue
    # remembered 16 evicted keys per resident key: 32 hits)
    assert hits["adaptive"] > 0.95 * adaptive.shadow_hits[AdaptivePolicy.SELECTIVE] > 500


def conversations(turns: list[int]) -> list[list[bytes]]:
    """One conversation per entry, that many turns each, one after another; every turn
    sends the last one again and adds a block."""
    out = []
    for c, n in enumerate(turns):
        history: list[bytes] = []
        for t in range(n):
            history = [*history, b"c%d-%d" % (c, t)]
            out.append(history)
    return out


def floors(depth: ConversationDepth, requests: list[list[bytes]]) -> list[int]:
    return [depth.floor(r, 10**6) for r in requests]


def test_conversation_depth_warms_the_depths_that_go_on_more_than_requests_do():
    # a quarter of conversations get a second turn, and those that do run to five
    requests = conversations([5 if c % 4 == 0 else 1 for c in range(400)])
    depth = ConversationDepth()
    got = floors(depth, requests)
    assert got[:8] == [1] * 8  # too few requests counted yet to judge
    # c396's five turns, then c397-c399: turns 2-4 are extended every time, first turns a
    # quarter of the time, fifth turns never
    assert got[-8:] == [1, 2, 3, 4, 1, 1, 1, 1]
    assert depth.floor(requests[-6], 10**6) == 3  # the same list again: the same floor


def test_conversation_depth_says_nothing_when_every_turn_is_the_last_with_the_same_chance():
    # conversation c has 1 + (trailing zero bits of c) turns: half of the turns at every
    # depth are followed by another
    requests = conversations([1 + ((c & -c).bit_length() - 1) for c in range(1, 2049)])
    assert set(floors(ConversationDepth(), requests)) == {1}


def test_conversation_depth_finds_the_parent_below_the_last_block():
    depth = ConversationDepth(ratio=0.0)  # every depth warm once enough requests are counted
    floors(depth, conversations([1] * 600))
    a, b = [b"a", b"b"], [b"a", b"b", b"c", b"d"]
    assert floors(depth, [a, b, [*b, b"e"], list(a), [b"a", b"x"]]) == [1, 2, 3, 1, 1]
    # a again ends where a ended: not its own parent; a..x extends no request's end


def test_adaptive_observe_only_queues_the_previous_request_and_drops_when_the_queue_is_full():
    adaptive = AdaptivePolicy(queue=2)
    adaptive.insert(b"r", meta())  # one resident key: the shadows have a size
    for k in (b"a", b"b", b"c", b"d", b"e"):
        adaptive.observe([k])  # the first has no previous request to queue
    assert adaptive.shadow_hits[0.0] == 0
    assert adaptive.stats() == {"following": "2.0", "switches": 0, "replays": 0, "replays_waiting": 2,
                                "replays_dropped": 2}
    adaptive.learn()
    assert adaptive.stats()["replays"] == 2 and adaptive.stats()["replays_waiting"] == 0
