import pytest

from cacheserver import protocol as p
from tiers.base import Location


def test_header_round_trip():
    h = p.Header(p.Op.GET, 7, 16, 256)
    assert p.unpack_header(h.pack()) == h
    assert len(h.pack()) == p.HEADER_SIZE == 20


@pytest.mark.parametrize("raw", [b"XX" + bytes(18), b"KV\x09" + bytes(17)])
def test_bad_magic_or_version_is_a_frame_error(raw):
    with pytest.raises(p.FrameError):
        p.unpack_header(raw)


def test_put_body_round_trip_keeps_payloads_as_views():
    entries = [(b"a" * 16, b"r" * 16, 0, b"x" * 10), (b"b" * 16, b"a" * 16, 1, b"yy")]
    body = memoryview(b"".join(bytes(b) for b in p.put_buffers(entries)))
    got = p.split_put(body, 2)
    assert [(e.key, e.parent, e.depth, bytes(e.payload)) for e in got] == entries
    assert isinstance(got[0].payload, memoryview)


@pytest.mark.parametrize("cut", [1, 5, 60])
def test_truncated_put_body_is_a_frame_error(cut):
    body = b"".join(bytes(b) for b in p.put_buffers([(b"a" * 16, b"r" * 16, 0, b"x" * 10)]))
    with pytest.raises(p.FrameError):
        p.split_put(memoryview(body[:-cut]), 1)


def test_put_body_with_trailing_bytes_is_a_frame_error():
    body = b"".join(bytes(b) for b in p.put_buffers([(b"a" * 16, b"r" * 16, 0, b"x")])) + b"!"
    with pytest.raises(p.FrameError):
        p.split_put(memoryview(body), 1)


def test_get_reply_round_trip_with_a_miss_and_a_payload_not_vouched_for():
    body = b"".join(bytes(b) for b in p.get_buffers([b"abc", None, b"d", b"ef"]))
    body = memoryview(body + p.get_trailer([True, True, True, False]))
    assert [None if v is None else bytes(v) for v in p.parse_get(body, 4)] == [b"abc", None, b"d", None]


def test_lookup_reply_names_tiers():
    body = p.lookup_body([0, 1], ["dram", "flash"])
    assert p.parse_lookup(body, 2) == ["dram", "flash"]


def test_keys_body_length_must_match_count():
    with pytest.raises(p.FrameError):
        p.split_keys(memoryview(b"k" * 17), 1)


def test_pin_body_round_trip():
    keys, tier, ttl = p.split_pin(memoryview(p.pin_body([b"k" * 16], "dram", 5.0)), 1)
    assert (keys, tier, ttl) == ([b"k" * 16], "dram", 5.0)
    assert p.split_pin(memoryview(p.pin_body([b"k" * 16], None, None)), 1)[1:] == (None, None)


def test_get_mapped_names_the_slabs_mapped_and_each_location_its_slab():
    keys = [b"a" * 16, b"b" * 16, b"c" * 16]
    body = p.get_mapped_body(keys, ["hbm", "dram", "hbm"])
    assert p.split_get_mapped(memoryview(body), 3) == (keys, ["dram", "hbm"])
    assert p.split_get_mapped(memoryview(p.get_mapped_body(keys, [])), 3) == (keys, [])
    with pytest.raises(p.FrameError, match="names slabs"):
        p.split_get_mapped(memoryview(b"\x04" + b"".join(keys)), 3)
    results = [Location(((4096, 100),), 100, 7, "hbm"), b"inline", None, Location(((0, 50),), 50, 2, "dram")]
    reply = memoryview(b"".join(bytes(b) for b in p.get_mapped_buffers(results)))
    got = p.parse_get_mapped(reply, 4, {"dram": 1 << 20, "hbm": 1 << 20})
    assert got[0] == results[0] and got[3] == results[3] and bytes(got[1]) == b"inline" and got[2] is None
    with pytest.raises(p.FrameError, match="did not map"):  # a location in a slab never mapped
        p.parse_get_mapped(reply, 4, {"dram": 1 << 20})
    with pytest.raises(p.FrameError, match="leave the 4096 B hbm slab"):
        p.parse_get_mapped(reply, 4, {"dram": 1 << 20, "hbm": 4096})


def test_device_map_reply_round_trip():
    handle = bytes(range(64))
    body = p.device_map_body(1 << 20, 1 << 16, 16, handle, "GPU-1234")
    assert p.parse_device_map(memoryview(body)) == ((1 << 20, 1 << 16, 16), handle, "GPU-1234")
    with pytest.raises(p.FrameError, match="inconsistent"):
        p.parse_device_map(p.device_map_body(1 << 20, 1 << 16, 15, handle, "GPU-1234"))
    with pytest.raises(p.FrameError):
        p.parse_device_map(body[: p.DEVICE_MAP_REPLY.size])  # no UUID
