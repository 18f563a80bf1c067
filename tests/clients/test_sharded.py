"""``ShardedCacheClient`` over three real ``kvtier serve`` processes: every block lands on
the service the ring assigns its key to, calls answer in the caller's order, a lookup's
prefix ends at the first key its owner lacks, and a dead service costs only its keys."""

from __future__ import annotations

import signal

import httpx
import pytest

from clients.cache_client import CacheClient
from clients.sharded import ShardedCacheClient, open_client
from tests.cacheserver.blocks import chain, keys_of


@pytest.fixture
def three(serve_factory):
    return [serve_factory(flash_gb=0) for _ in range(3)]


def test_blocks_spread_by_the_ring_and_come_back_in_order(three):
    blocks = chain("sharded", 24, size=2048)
    keys = keys_of(blocks)
    with ShardedCacheClient([s.data_url for s in three]) as c:
        assert c.put(blocks) == 24
        assert c.lookup(keys) == ["dram"] * 24
        assert [bytes(g) for g in c.get(keys)] == [b[3] for b in blocks]
        outs = [memoryview(bytearray(2048)) for _ in keys]
        assert c.get_into(keys, outs) == [2048] * 24
        assert [bytes(o) for o in outs] == [b[3] for b in blocks]
        assert c.pin(keys[:5]) == 5 and c.unpin(keys[:5]) == 5
        assert c.ping()
        held = {s.data_url: httpx.get(s.rest_url + "/v1/stats").json()["blocks"] for s in three}
        assert sum(held.values()) == 24
        for s in three:  # each holds exactly the keys the ring gives it (ports, so shares, vary)
            with CacheClient(s.data_url) as one:
                mine = [k for k in keys if c.owner(k) == s.data_url]
                assert len(one.lookup(mine)) == len(mine) == held[s.data_url]


def test_the_prefix_ends_at_the_first_key_its_owner_lacks(three):
    blocks = chain("prefix", 24, size=512)
    keys = keys_of(blocks)
    with ShardedCacheClient([s.data_url for s in three]) as c:
        c.put(blocks)
        assert c.delete([keys[13]]) == 1
        assert c.lookup(keys) == ["dram"] * 13
        assert c.get(keys)[13] is None


def test_a_dead_service_costs_only_its_own_keys(three):
    blocks = chain("outage", 24, size=512)
    keys = keys_of(blocks)
    c = open_client(",".join(s.data_url for s in three))
    assert isinstance(c, ShardedCacheClient)
    c.put(blocks)
    dead = next(s for s in three if s.data_url == c.owner(keys[0]))  # one that holds some
    dead.stop(signal.SIGKILL)
    got = c.get(keys)
    for key, block, g in zip(keys, blocks, got, strict=True):
        if c.owner(key) == dead.data_url:
            assert g is None
        else:
            assert bytes(g) == block[3]
    assert c.counters.failures >= 1 and not c.ping()
    assert c.put(blocks) is None  # the dead owner's share was not stored: not "nothing new"
    c.close()


def test_one_url_is_a_plain_client_and_a_service_twice_is_refused(three):
    assert isinstance(open_client(three[0].data_url), CacheClient)
    with pytest.raises(ValueError, match="twice"):
        ShardedCacheClient([three[0].data_url, three[0].data_url])


@pytest.mark.parametrize(("url", "error"), [("", "no cache service"), (" , ", "no cache service"),
                                             ("kvtier://127.0.0.1:1,,kvtier://127.0.0.1:2", "empty entry"),
                                             ("kvtier://127.0.0.1:1,", "empty entry")])
def test_a_url_list_with_a_gap_is_refused_before_anything_connects(url, error):
    with pytest.raises(ValueError, match=error):
        open_client(url)
