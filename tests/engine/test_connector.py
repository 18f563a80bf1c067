"""The cache connector against a real ``kvtier serve``: what it fetches, what it saves,
and what happens when the service is down or stalls."""

from __future__ import annotations

import time

import pytest

from cacheserver.process import free_port
from engine.runtime.connector import CacheConnector, ConnectorConfig, SavedBlock
from hashing.keys import BlockHasher, Namespace

HASHER = BlockHasher(Namespace("test-model", "f32/L1/H1/D4"), 4)


def blocks(n: int, salt: str = "") -> list[SavedBlock]:
    keys = BlockHasher(Namespace("m", salt=salt), 4).keys(list(range(4 * n)))
    parents = [HASHER.root, *keys[:-1]]
    pairs = enumerate(zip(keys, parents, strict=True))
    return [SavedBlock(k, p, i, bytes([i + 1]) * 1000) for i, (k, p) in pairs]


def wait_completed(connector: CacheConnector, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = connector.completed()
        if done:
            return done
        connector.wait(0.05)
    raise AssertionError("no fetch completed")


@pytest.fixture
def connector(served):
    c = CacheConnector(ConnectorConfig(served.data_url))
    yield c
    c.close()


def test_saves_arrive_and_fetch_returns_the_cached_prefix(connector):
    chain = blocks(4)
    connector.save(chain[:3])
    assert connector.flush(10)
    assert connector.stats.saved_blocks == 3
    connector.start_fetch("r1", [b.key for b in chain])
    [(rid, result)] = wait_completed(connector)
    assert rid == "r1" and not result.timed_out
    assert [bytes(b) for b in result.blocks] == [b.payload for b in chain[:3]]
    assert result.tiers == ["dram"] * 3
    assert connector.stats.fetched_blocks == 3 and connector.stats.hits_by_tier == {"dram": 3}
    assert connector.num_pending == 0


def test_nothing_cached_is_an_empty_result(connector):
    connector.start_fetch("r", [b.key for b in blocks(2, salt="other")])
    [(_, result)] = wait_completed(connector)
    assert result.blocks == [] and not result.timed_out



def test_service_down_means_misses_and_failed_saves():
    c = CacheConnector(ConnectorConfig(f"kvtier://127.0.0.1:{free_port()}", client_timeout_s=0.5))
    try:
        c.start_fetch("r", [b.key for b in blocks(2)])
        [(_, result)] = wait_completed(c)
        assert result.blocks == []
        c.save(blocks(2))
        assert c.flush(10)
        assert c.stats.save_failed == 2 and c.stats.saved_blocks == 0
        assert c.client.counters.connection_errors >= 1
    finally:
        c.close()


def test_a_stalled_service_times_out_and_full_save_queue_drops(black_hole):
    c = CacheConnector(ConnectorConfig(black_hole, fetch_timeout_s=0.2, client_timeout_s=2.0,
                                       save_queue_blocks=2, save_batch_blocks=1))
    try:
        started = time.monotonic()
        c.start_fetch("r", [b.key for b in blocks(2)])
        [(_, result)] = wait_completed(c)
        assert result.timed_out and result.blocks == []
        assert time.monotonic() - started < 1.5  # the request did not wait for the client
        assert c.stats.fetch_timeouts == 1
        c.save(blocks(10))  # the saver is stuck on the first; the queue holds two more
        assert c.stats.save_dropped >= 7
    finally:
        c.close()


def test_bad_urls_are_refused():
    with pytest.raises(ValueError, match="kvtier://"):
        ConnectorConfig("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="empty entry"):  # the same rule as open_client's
        ConnectorConfig("kvtier://127.0.0.1:1,")
