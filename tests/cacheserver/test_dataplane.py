"""The data plane's logic without sockets, over a real store (a 4-page DRAM tier)."""

import pytest

from cacheserver import protocol as p
from cacheserver.dataplane import DataPlane, Limits
from tests.cacheserver.blocks import chain
from tiers.slab import dram_tier
from tiers.store import TieredStore


@pytest.fixture
def plane():
    store = TieredStore([dram_tier(4 * 1024, page_size=1024)])
    yield DataPlane(store, Limits(max_frame_bytes=64 << 10, max_batch=8))
    store.close(persist=False)


def call(plane, op, count, buffers):
    body = memoryview(b"".join(bytes(b) for b in buffers))
    header = p.Header(op, 1, count, len(body))
    assert plane.check(header) is None
    return plane.handle(header, body)


def body_of(reply):
    """The reply's body as the socket server sends it: its buffers, then its trailer."""
    body = b"".join(bytes(memoryview(b)) for b in reply.buffers)
    body += reply.trailer() if reply.trailer else b""
    if reply.sent:
        reply.sent()
    assert len(body) == reply.body_len
    return memoryview(body)


def test_put_lookup_get_delete(plane):
    blocks = chain("a", 3, size=1000)
    keys = [b[0] for b in blocks]
    assert call(plane, p.Op.PUT, 3, p.put_buffers(blocks)).count == 3
    reply = call(plane, p.Op.LOOKUP, 3, [p.keys_body(keys)])
    assert p.parse_lookup(body_of(reply), reply.count) == ["dram"] * 3
    reply = call(plane, p.Op.GET, 4, [p.keys_body([*keys, b"z" * 16])])
    got = p.parse_get(body_of(reply), 4)
    assert [None if g is None else bytes(g) for g in got] == [b[3] for b in blocks] + [None]
    assert call(plane, p.Op.DELETE, 1, [p.keys_body(keys[2:])]).count == 1
    assert call(plane, p.Op.LOOKUP, 3, [p.keys_body(keys)]).count == 2
    assert plane.counters.requests == {"PUT": 1, "LOOKUP": 2, "GET": 1, "DELETE": 1}


def test_a_get_is_sent_from_dram_held_there_and_vouched_for_by_its_trailer(plane):
    """Four 1 KiB pages: two blocks being sent cannot be evicted to make room, and one
    deleted (its pages rewritten) while it is sent comes back as a miss, not mixed bytes."""
    blocks = chain("held", 2, size=1024)
    keys = [b[0] for b in blocks]
    call(plane, p.Op.PUT, 2, p.put_buffers(blocks))
    reply = call(plane, p.Op.GET, 2, [p.keys_body(keys)])  # not sent yet: both held in DRAM
    assert plane.counters.sent_from_dram == 2048
    others = chain("others", 3, size=1024)
    assert call(plane, p.Op.PUT, 3, p.put_buffers(others)).count == 2  # room for two only
    assert call(plane, p.Op.LOOKUP, 2, [p.keys_body(keys)]).count == 2  # the held ones stayed
    assert [bytes(g) for g in p.parse_get(body_of(reply), 2)] == [b[3] for b in blocks]

    reply = call(plane, p.Op.GET, 2, [p.keys_body(keys)])
    assert call(plane, p.Op.DELETE, 1, [p.keys_body(keys[:1])]).count == 1
    assert call(plane, p.Op.PUT, 1, p.put_buffers(others[2:])).count == 1  # takes the freed page
    got = p.parse_get(body_of(reply), 2)
    assert got[0] is None and bytes(got[1]) == blocks[1][3]
    assert plane.counters.changed_while_sent == 1


def test_oversize_frame_is_refused_before_its_body_is_read(plane):
    reply = plane.check(p.Header(p.Op.PUT, 1, 1, 1 << 40))
    assert reply.status == p.Status.BAD_FRAME and reply.close
    assert b"limit" in bytes(reply.buffers[0])
    assert plane.counters.errors["BAD_FRAME"] == 1


def test_oversize_batch_and_unknown_op_are_refused(plane):
    assert plane.check(p.Header(p.Op.GET, 1, 9, 9 * 16)).status == p.Status.BAD_FRAME
    assert plane.check(p.Header(99, 1, 0, 0)).status == p.Status.BAD_FRAME


def test_malformed_put_closes_only_with_an_error_reply(plane):
    reply = plane.handle(p.Header(p.Op.PUT, 1, 2, 10), memoryview(bytes(10)))
    assert (reply.status, reply.close) == (p.Status.BAD_FRAME, True)


def test_store_refusals_keep_the_connection(plane):
    blocks = chain("b", 1, size=1000)
    reply = call(plane, p.Op.PIN, 1, [p.pin_body([blocks[0][0]], None, None)])
    assert (reply.status, reply.close) == (p.Status.UNKNOWN_BLOCK, False)
    too_big = [(b"k" * 16, b"r" * 16, 0, bytes(5000))]  # larger than the whole tier
    reply = call(plane, p.Op.PUT, 1, p.put_buffers(too_big))
    assert (reply.status, reply.close) == (p.Status.BAD_REQUEST, False)


def test_pin_keeps_blocks_through_eviction(plane):
    first = chain("c", 2, size=1000)
    call(plane, p.Op.PUT, 2, p.put_buffers(first))
    assert call(plane, p.Op.PIN, 2, [p.pin_body([b[0] for b in first], "dram", None)]).count == 2
    call(plane, p.Op.PUT, 2, p.put_buffers(chain("d", 2, size=1000)))  # the tier holds 4
    call(plane, p.Op.PUT, 2, p.put_buffers(chain("e", 2, size=1000)))  # evicts chain d
    assert call(plane, p.Op.LOOKUP, 2, [p.keys_body([b[0] for b in first])]).count == 2
    assert call(plane, p.Op.UNPIN, 2, [p.keys_body([b[0] for b in first])]).count == 2
