import pytest

from tiers.policy import (
    DEFAULT_POLICY,
    POLICIES,
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
