"""The client after its cache service was SIGKILLed and started again on the same port:
the open breaker lets it back in after its cooldown, and stale pooled connections cost no
miss (the first one that fails takes the others with it)."""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from clients.async_client import AsyncCacheClient
from clients.cache_client import CacheClient
from clients.guard import ClientOptions
from tests.cacheserver.blocks import chain, keys_of


def test_stale_pooled_connections_cost_no_miss_after_a_restart(serve_factory):
    served = serve_factory(flash_gb=0, inject_delay_ms=100)  # slow, so the calls below overlap
    blocks = chain("stale", 2)
    c = CacheClient(served.data_url)  # 2 retries, a pool of 8 connections
    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(lambda _: c.put(blocks), range(6))) == 2
    assert c.counters.connects == 6  # six pooled connections, all about to go stale
    served.stop(signal.SIGKILL)
    served.start()
    assert c.put(blocks) == 2  # the first stale connection fails; the retry opens a new one
    assert c.counters.failures == 0 and c.counters.connection_errors == 1
    assert c.counters.connects == 7
    c.close()


def test_the_breaker_opened_by_an_outage_lets_the_client_back_after_its_cooldown(serve_factory):
    served = serve_factory(flash_gb=0)
    blocks = chain("outage", 2)
    c = CacheClient(served.data_url, ClientOptions(breaker_cooldown=0.5))
    assert c.put(blocks) == 2
    served.stop(signal.SIGKILL)
    for _ in range(8):
        assert c.lookup(keys_of(blocks)) == []  # refused: a miss, and the breaker opens
    assert c.guard.breaker.is_open and c.counters.short_circuits >= 1
    served.start()  # the same port; its DRAM is gone (the blocks were not persisted)
    time.sleep(0.5)  # the cooldown has passed (the start alone takes longer)
    failures = c.counters.failures
    assert c.put(blocks) == 2  # the trial call after the cooldown goes through
    assert not c.guard.breaker.is_open
    assert c.lookup(keys_of(blocks)) == ["dram", "dram"]
    assert c.counters.failures == failures
    c.close()


def test_the_async_client_drops_stale_pooled_connections_too(serve_factory):
    served = serve_factory(flash_gb=0, inject_delay_ms=100)
    blocks = chain("stale-async", 2)

    async def scenario() -> AsyncCacheClient:
        c = AsyncCacheClient(served.data_url)
        assert sum(await asyncio.gather(*(c.put(blocks) for _ in range(6)))) == 2
        assert c.counters.connects == 6
        served.stop(signal.SIGKILL)
        served.start()
        assert await c.put(blocks) == 2  # the first stale connection fails; the retry reconnects
        await c.close()
        return c

    c = asyncio.run(scenario())
    assert c.counters.failures == 0 and c.counters.connection_errors == 1
    assert c.counters.connects == 7
