"""Both clients against a real server, and their fallbacks when it is gone."""

import asyncio
import socket
import threading

import pytest

from clients.async_client import AsyncCacheClient
from clients.cache_client import CacheClient
from clients.guard import ClientOptions
from clients.url import Address, parse_url
from tests.cacheserver.blocks import chain, keys_of


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_sync_round_trip(module_server, transport):
    url = module_server.data_url if transport == "tcp" else module_server.unix_url
    blocks = chain(f"sync-{transport}", 5)
    with CacheClient(url, ClientOptions(max_batch=2)) as c:  # 3 pipelined batches per call
        assert c.ping()
        assert c.put(blocks) == 5 and c.put(blocks) == 0
        assert c.lookup([*keys_of(blocks), b"\0" * 16]) == ["dram"] * 5
        assert [bytes(p) for p in c.get(keys_of(blocks))] == [b[3] for b in blocks]
        outs = [memoryview(bytearray(5000)) for _ in range(2)]
        assert c.get_into([blocks[0][0], b"\1" * 16], outs) == [4096, None]
        assert bytes(outs[0][:4096]) == blocks[0][3]
        assert c.pin(keys_of(blocks)[:2], ttl=30) == 2 and c.unpin(keys_of(blocks)[:2]) == 2
        assert c.delete(keys_of(blocks)[3:]) == 2
        assert c.lookup(keys_of(blocks)) == ["dram"] * 3
        assert c.counters.failures == 0 and c.counters.connects == 1
        assert c.counters.bytes_sent > 5 * 4096 * 2


def test_lookup_stops_at_the_first_miss_across_batches(module_server):
    blocks = chain("lookup-batches", 5)
    with CacheClient(module_server.data_url, ClientOptions(max_batch=2)) as c:
        c.put(blocks[:3] + blocks[4:])
        assert len(c.lookup(keys_of(blocks))) == 3


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_async_round_trip(module_server, transport):
    url = module_server.data_url if transport == "tcp" else module_server.unix_url
    blocks = chain(f"async-{transport}", 4)

    async def main():
        async with AsyncCacheClient(url) as c:
            assert await c.put(blocks) == 4
            results = await asyncio.gather(*(c.get(keys_of(blocks)) for _ in range(4)))
            assert all([bytes(p) for p in r] == [b[3] for b in blocks] for r in results)
            assert await c.lookup(keys_of(blocks)) == ["dram"] * 4
            assert await c.pin(keys_of(blocks)[:1]) == 1 and await c.unpin(keys_of(blocks)[:1]) == 1
            assert await c.delete(keys_of(blocks)) == 4
            assert c.counters.failures == 0

    asyncio.run(main())


def test_server_errors_are_a_fallback_not_an_exception(module_server):
    with CacheClient(module_server.data_url) as c:
        assert c.pin([b"\7" * 16]) == 0  # unknown block
        assert c.counters.server_errors == 1 and c.counters.failures == 1
        assert c.ping()


def dead_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"kvtier://127.0.0.1:{s.getsockname()[1]}"


def test_a_dead_server_gives_misses_then_the_breaker_fails_fast():
    c = CacheClient(dead_address(), ClientOptions(retries=1, backoff=0.001, breaker_threshold=2,
                                                  breaker_cooldown=60))
    keys = keys_of(chain("dead", 2))
    assert c.get(keys) == [None, None]
    assert c.lookup(keys) == [] and c.put(chain("dead", 1)) is None
    n = c.counters
    assert (n.calls, n.failures, n.retries, n.connection_errors, n.short_circuits) == (3, 3, 2, 4, 1)
    assert c.guard.breaker.is_open


def test_a_silent_server_times_out_into_a_miss():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    t.start()
    c = CacheClient(f"kvtier://127.0.0.1:{listener.getsockname()[1]}", ClientOptions(timeout=0.2))
    assert c.get([b"\0" * 16]) == [None]
    assert c.counters.timeouts == 1 and c.counters.retries == 0
    listener.close()


def test_async_dead_server_gives_misses():
    async def main():
        c = AsyncCacheClient(dead_address(), ClientOptions(retries=0))
        assert await c.get([b"\0" * 16]) == [None]
        assert c.counters.connection_errors == 1

    asyncio.run(main())


def test_the_client_recovers_when_the_server_comes_back(serve_factory):
    served = serve_factory(flash_gb=0)
    c = CacheClient(served.data_url, ClientOptions(retries=0, breaker_threshold=1, breaker_cooldown=0.0))
    blocks = chain("recover", 1)
    assert c.put(blocks) == 1
    served.restart()
    c.put(blocks)  # the pooled connection is dead: a miss, counted
    assert c.counters.connection_errors == 1
    assert c.put(blocks) == 1  # a fresh connection
    assert c.counters.connects == 2


@pytest.mark.parametrize(("url", "address"), [
    ("kvtier://h:9", Address("tcp", "h", 9)), ("kvtier://h", Address("tcp", "h", 8301)),
    ("unix:///tmp/s.sock", Address("unix", path="/tmp/s.sock")),
])
def test_urls(url, address):
    assert parse_url(url) == address


@pytest.mark.parametrize("url", ["http://h:1", "unix://", "kvtier://:5", "kvtier://h:x"])
def test_bad_urls(url):
    with pytest.raises(ValueError):
        parse_url(url)
