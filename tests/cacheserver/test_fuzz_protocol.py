"""Hostile input to the binary protocol, without sockets (hypothesis, seeded): the pure
decoders either decode or raise ``FrameError``, and the data plane answers every frame
with a reply (never an exception, never ``SERVER_ERROR``, which would mean a bug), over a
real store that stays consistent."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cacheserver import protocol as p
from cacheserver.dataplane import DataPlane, Limits
from tests.cacheserver.blocks import chain
from tiers.slab import dram_tier
from tiers.store import TieredStore

FUZZ = settings(max_examples=400, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
GOOD = chain("fuzz", 4, size=1000)
KNOWN = [b[0] for b in GOOD]


@pytest.fixture(scope="module")
def plane():
    store = TieredStore([dram_tier(64 * 1024, page_size=1024)])
    plane = DataPlane(store, Limits(max_frame_bytes=64 << 10, max_batch=64))
    yield plane
    store.close(persist=False)


def valid_frames() -> list[tuple[int, int, bytes]]:
    """(op, count, body) of one well-formed request per op: the seeds that mutation starts from."""
    return [
        (p.Op.PING, 0, b""),
        (p.Op.LOOKUP, 4, p.keys_body(KNOWN)),
        (p.Op.GET, 4, p.keys_body(KNOWN)),
        (p.Op.PUT, 4, b"".join(bytes(memoryview(b)) for b in p.put_buffers(GOOD))),
        (p.Op.DELETE, 1, p.keys_body([b"d" * 16])),
        (p.Op.PIN, 1, p.pin_body(KNOWN[:1], "dram", 5.0)),
        (p.Op.UNPIN, 1, p.keys_body(KNOWN[:1])),
    ]


@st.composite
def mutated(draw) -> tuple[int, int, bytes]:
    """A valid frame with bytes flipped, cut or appended, its count or op changed."""
    op, count, body = draw(st.sampled_from(valid_frames()))
    body = bytearray(body)
    for _ in range(draw(st.integers(0, 4))):
        if body:
            body[draw(st.integers(0, len(body) - 1))] = draw(st.integers(0, 255))
    body = body[: draw(st.integers(0, len(body)))] if draw(st.booleans()) else body
    body += draw(st.binary(max_size=64))
    count = draw(st.one_of(st.just(count), st.integers(0, 2**32 - 1)))
    op = draw(st.one_of(st.just(int(op)), st.integers(0, 255)))
    return op, count, bytes(body)


def answer(plane: DataPlane, op: int, count: int, body: bytes) -> p.Status:
    header = p.Header(op, 7, count, len(body))
    reply = plane.check(header) or plane.handle(header, memoryview(body))
    assert reply.status != p.Status.SERVER_ERROR, bytes(reply.buffers[0])
    return p.Status(reply.status)


@seed(8)
@FUZZ
@given(frame=st.one_of(mutated(), st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1),
                                            st.binary(max_size=512))))
def test_data_plane_answers_every_frame(plane, frame):
    answer(plane, *frame)
    # The store still works after whatever that frame did.
    assert answer(plane, p.Op.PUT, 1, b"".join(bytes(memoryview(b)) for b in p.put_buffers(GOOD[:1]))) == 0
    assert plane.store.get(KNOWN[:1]) == [GOOD[0][3]]


@seed(8)
@FUZZ
@given(raw=st.binary(min_size=p.HEADER_SIZE, max_size=p.HEADER_SIZE))
def test_headers_decode_or_raise_frame_error(plane, raw):
    try:
        header = p.unpack_header(raw)
    except p.FrameError:
        return
    refusal = plane.check(header)
    if header.body_len > plane.limits.max_frame_bytes or header.count > plane.limits.max_batch:
        assert refusal is not None and refusal.status == p.Status.BAD_FRAME and refusal.close


@seed(8)
@FUZZ
@given(body=st.binary(max_size=300), count=st.integers(0, 64))
def test_reply_parsers_decode_or_raise_frame_error(body, count):
    """What a client does with a garbage reply: a ``FrameError`` it turns into a fallback."""
    for parse in (p.parse_get, p.parse_lookup, p.split_keys, p.split_put, p.split_pin,
                  lambda body, n: p.parse_get_mapped(body, n, {"dram": 1 << 20, "hbm": 1 << 20}),
                  lambda body, n: p.parse_map(body), lambda body, n: p.parse_device_map(body),
                  p.split_get_mapped):
        with contextlib.suppress(p.FrameError):
            parse(memoryview(body), count)
