"""``kvtier serve --inject-garbage RATE``: a share of data-plane replies replaced by
corrupted frames, on purpose. The data plane counts them; a client treats every one as a
failed call (the fallback answer), never as data."""

from __future__ import annotations

import random

import pytest

from cacheserver import protocol as p
from cacheserver.config import load
from cacheserver.dataplane import DataPlane, Limits
from cacheserver.faults import Faults
from clients import calls
from clients.cache_client import CacheClient
from clients.guard import ClientOptions
from tests.cacheserver.blocks import chain
from tiers.slab import dram_tier
from tiers.store import TieredStore


@pytest.fixture
def garbling():
    store = TieredStore([dram_tier(8 * 1024, page_size=1024)])
    yield DataPlane(store, Limits(max_frame_bytes=64 << 10, max_batch=8),
                    Faults(garbage_rate=1.0, rng=random.Random(7)))
    store.close(persist=False)


def call(plane, op, count, buffers):
    body = memoryview(b"".join(bytes(b) for b in buffers))
    reply = plane.handle(p.Header(op, 1, count, len(body)), body)
    return reply, memoryview(b"".join(bytes(memoryview(b)) for b in reply.buffers))


def test_every_garbage_reply_is_counted_and_refused_by_the_client_decoders(garbling):
    blocks = chain("g", 4, size=1000)
    keys = [b[0] for b in blocks]
    call(garbling, p.Op.PUT, 4, p.put_buffers(blocks))
    assert len(garbling.store) == 4  # the put itself happened; only its reply is garbage
    plans = {p.Op.GET: calls.get_plan(keys, 8), p.Op.LOOKUP: calls.lookup_plan(keys, 8)}
    refused = 0
    for i in range(100):
        op = (p.Op.GET, p.Op.LOOKUP)[i % 2]
        reply, body = call(garbling, op, 4, [p.keys_body(keys)])
        header = p.Header(reply.status, 1, reply.count, len(body))
        try:
            calls.check_reply(header, body)
            result = plans[op].parse(header.count, body)
        except p.FrameError:
            refused += 1
            continue
        assert op == p.Op.LOOKUP, "a garbage GET reply must never parse into payloads"
        assert len(result) <= 4  # noise that happens to decode as a lookup: names, never data
    assert garbling.counters.injected_garbage == 101
    assert refused >= 95


def test_undefined_statuses_are_frame_errors_not_crashes():
    with pytest.raises(p.FrameError, match="not defined"):
        calls.check_reply(p.Header(200, 1, 0, 0), b"noise")
    with pytest.raises(calls.ServerError, match="STORE_FULL"):
        calls.check_reply(p.Header(p.Status.STORE_FULL, 1, 0, 0), b"full")


def test_inject_garbage_is_a_share_of_replies():
    assert load({}, {}).inject_garbage == 0
    assert load({}, {"KVTIER_INJECT_GARBAGE": "0.25"}).inject_garbage == 0.25
    with pytest.raises(ValueError, match="0-1"):
        load({"inject_garbage": 1.5}, {})


def test_a_garbling_service_never_hands_out_wrong_data(serve_factory):
    served = serve_factory(inject_garbage=0.5)
    blocks = chain("served", 8, size=4096)
    keys = [b[0] for b in blocks]
    # No breaker: this is about what a garbled reply turns into, not about backing off.
    with CacheClient(served.data_url, ClientOptions(breaker_threshold=1 << 30)) as c:
        while c.lookup(keys) != ["dram"] * 8:  # a garbled lookup answers []
            c.put(blocks)
        answers = [c.get(keys) for _ in range(60)]
        hits = [a for a in answers if a[0] is not None]
        assert all([bytes(g) for g in a] == [b[3] for b in blocks] for a in hits)
        assert 0 < len(hits) < 60
        assert c.counters.failures >= 1 and c.counters.short_circuits == 0
    plane = served.stats()["data_plane"]
    assert plane["injected_garbage"] >= 60 - len(hits)  # every miss was a garbled reply
    served.stop()
    assert "TESTING: 50% of data-plane replies are replaced by garbage" in served.output
