import pytest

from tiers.policy import POLICIES, LRUPolicy, make_policy


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
