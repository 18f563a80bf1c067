"""The binary data-plane protocol: frame layouts and their pure encoders and decoders.

Every request and every reply is one frame: a fixed 20-byte header, then ``body_len``
bytes of body. Payloads travel raw in the body, never encoded. ``docs/protocol.md`` is
the full description; this module is its executable form, shared by the server and the
clients, and touches no socket.

::

    header  <2s B B I I Q>   magic b"KV" | version | op (request) or status (reply) |
                             request id | count | body length
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from tiers.base import Location

MAGIC = b"KV"
VERSION = 3  # 2: GET replies end with a byte per key saying whether its payload is whole;
# 3: MAP_DEVICE, and GET_MAPPED names the slabs a client mapped and the slab of each location
HEADER = struct.Struct("<2sBBIIQ")
HEADER_SIZE = HEADER.size  # 20
KEY_SIZE = 16
PUT_ENTRY = struct.Struct("<16s16sIQ")  # key | parent | depth | payload size
PIN_PREFIX = struct.Struct("<dB")  # ttl seconds (0: none) | tier name length
MISSING = -1  # a GET reply's size for a key the store lacks
MAP_REPLY = struct.Struct("<QQQ")  # slab bytes | page size | pages (generations: 8 B each)
DEVICE_MAP_REPLY = struct.Struct("<QQQ64s")  # MAP_REPLY | CUDA IPC handle; then the GPU's UUID
MAPPED_ENTRY = np.dtype([("size", "<i8"), ("segments", "<i4"), ("slab", "<u4"), ("generation", "<u8")])
SLABS = ("dram", "hbm")  # the slabs a client may map (MAP, MAP_DEVICE), by their number on the wire
SEGMENT = np.dtype([("offset", "<u8"), ("length", "<u8")])
INLINE = -1  # a GET_MAPPED entry's segment count for a payload that follows in the reply body


class Op(IntEnum):
    PING = 0
    LOOKUP = 1
    GET = 2
    PUT = 3
    DELETE = 4
    PIN = 5
    UNPIN = 6
    MAP = 7  # Unix socket only: the reply carries read-only descriptors of the shared slab
    GET_MAPPED = 8  # like GET, but blocks in the slabs the client mapped come back as where they lie
    MAP_DEVICE = 9  # Unix socket only: the HBM slab's CUDA IPC handle and generations' descriptor


class Status(IntEnum):
    OK = 0
    BAD_FRAME = 1  # malformed or oversize frame: the server closes the connection after it
    BAD_REQUEST = 2  # a well-framed request the store refuses (unknown tier, bad size)
    UNKNOWN_BLOCK = 3
    STORE_FULL = 4
    SERVER_ERROR = 5
    NOT_DURABLE = 6  # durable mode: flash did not take some blocks of a PUT; they are not stored


class FrameError(ValueError):
    """A frame that breaks the protocol; the connection that sent it cannot continue."""


@dataclass(frozen=True, slots=True)
class Header:
    code: int  # op in a request, status in a reply
    request_id: int
    count: int
    body_len: int

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, self.code, self.request_id, self.count, self.body_len)


def unpack_header(raw) -> Header:
    magic, version, code, request_id, count, body_len = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}; expected {MAGIC!r}")
    if version != VERSION:
        raise FrameError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    return Header(code, request_id, count, body_len)


# -- request bodies ---------------------------------------------------------------------


def keys_body(keys: list[bytes]) -> bytes:
    for k in keys:
        if len(k) != KEY_SIZE:
            raise ValueError(f"a block key is {KEY_SIZE} bytes, got {len(k)}")
    return b"".join(keys)


def split_keys(body: memoryview, count: int) -> list[bytes]:
    if len(body) != count * KEY_SIZE:
        raise FrameError(f"{count} keys need {count * KEY_SIZE} B of body, got {len(body)}")
    raw = bytes(body)
    return [raw[i : i + KEY_SIZE] for i in range(0, len(raw), KEY_SIZE)]


def get_mapped_body(keys: list[bytes], slabs: Iterable[str]) -> bytes:
    """A GET_MAPPED request: a byte whose bit ``i`` says the client mapped ``SLABS[i]``,
    then the keys. Blocks in other slabs come back inline."""
    return bytes([sum(1 << SLABS.index(name) for name in set(slabs))]) + keys_body(keys)


def split_get_mapped(body: memoryview, count: int) -> tuple[list[bytes], list[str]]:
    if len(body) < 1:
        raise FrameError("get_mapped body lacks its slab byte")
    mask = body[0]
    if mask >> len(SLABS):
        raise FrameError(f"get_mapped names slabs {mask:#x}; there are {len(SLABS)}")
    return split_keys(body[1:], count), [name for i, name in enumerate(SLABS) if mask >> i & 1]


def put_buffers(entries: list[tuple[bytes, bytes, int, object]]) -> list:
    """The body of a PUT as buffers to send without joining: the entry table, then each
    payload as it is. ``entries`` are ``(key, parent, depth, payload)``."""
    table = bytearray()
    views = []
    for key, parent, depth, payload in entries:
        view = memoryview(payload).cast("B")
        if len(key) != KEY_SIZE or len(parent) != KEY_SIZE:
            raise ValueError(f"keys and parents are {KEY_SIZE} bytes")
        table += PUT_ENTRY.pack(key, parent, depth, view.nbytes)
        views.append(view)
    return [table, *views]


@dataclass(frozen=True, slots=True)
class PutEntry:
    key: bytes
    parent: bytes
    depth: int
    payload: memoryview


def split_put(body: memoryview, count: int) -> list[PutEntry]:
    """The entries of a PUT body; payloads are views into ``body`` (no copy)."""
    table_len = count * PUT_ENTRY.size
    if len(body) < table_len:
        raise FrameError(f"{count} put entries need {table_len} B of table, body has {len(body)}")
    entries, offset = [], table_len
    for i in range(count):
        key, parent, depth, size = PUT_ENTRY.unpack_from(body, i * PUT_ENTRY.size)
        if size == 0 or offset + size > len(body):
            raise FrameError(f"put entry {i} claims {size} B of payload; the body does not hold it")
        entries.append(PutEntry(key, parent, depth, body[offset : offset + size]))
        offset += size
    if offset != len(body):
        raise FrameError(f"put body has {len(body) - offset} B past its last payload")
    return entries


def pin_body(keys: list[bytes], tier: str | None, ttl: float | None) -> bytes:
    name = (tier or "").encode()
    if len(name) > 255:
        raise ValueError("a tier name is at most 255 bytes")
    return PIN_PREFIX.pack(ttl or 0.0, len(name)) + name + keys_body(keys)


def split_pin(body: memoryview, count: int) -> tuple[list[bytes], str | None, float | None]:
    if len(body) < PIN_PREFIX.size:
        raise FrameError("pin body is shorter than its prefix")
    ttl, name_len = PIN_PREFIX.unpack_from(body)
    start = PIN_PREFIX.size + name_len
    if len(body) < start:
        raise FrameError("pin body is shorter than its tier name")
    tier = bytes(body[PIN_PREFIX.size : start]).decode(errors="replace") or None
    if not np.isfinite(ttl) or ttl < 0:
        raise FrameError(f"pin ttl must be a finite number >= 0, got {ttl}")
    return split_keys(body[start:], count), tier, (ttl or None)


# -- reply bodies -----------------------------------------------------------------------


def lookup_body(tier_ids: list[int], tier_names: list[str]) -> bytes:
    """``count`` tier indices (one byte each), then the tier names, comma-separated."""
    return bytes(tier_ids) + ",".join(tier_names).encode()


def parse_lookup(body, count: int) -> list[str]:
    if len(body) < count:
        raise FrameError(f"lookup reply of {len(body)} B cannot hold {count} tier indices")
    try:
        names = bytes(body[count:]).decode().split(",")
        return [names[i] for i in bytes(body[:count])]
    except (UnicodeDecodeError, IndexError) as e:
        raise FrameError(f"lookup reply is malformed: {e}") from None


def get_buffers(payloads: list) -> list:
    """The body of a GET reply but its last ``count`` bytes: one int64 size per key
    (``MISSING`` for a miss), then the payloads of the hits, each sent as it is (a payload
    may be a list of buffers: its segments). The server sends payloads straight from its
    DRAM tier and only afterwards knows whether each one stayed put while it went out, so
    a byte per key follows them (``get_trailer``)."""
    parts = [[] if p is None else p if isinstance(p, list) else [p] for p in payloads]
    sizes = np.array([MISSING if p is None else body_size(s) for p, s in zip(payloads, parts, strict=True)],
                     dtype="<i8")
    return [sizes.tobytes(), *(b for s in parts for b in s)]


def get_trailer(whole: list[bool]) -> bytes:
    """A GET reply's last bytes: 1 where the payload sent is whole, 0 where the block was
    overwritten while it was sent (the client takes that as a miss)."""
    return bytes(whole)


def parse_get(body: memoryview, count: int) -> list[memoryview | None]:
    """Payloads of a GET reply as views into ``body``; ``None`` for a miss, and for a
    payload the trailer does not vouch for."""
    if len(body) < count * 9:
        raise FrameError(f"get reply of {len(body)} B cannot hold {count} sizes and flags")
    sizes = np.frombuffer(body, dtype="<i8", count=count)
    whole = bytes(body[len(body) - count :])
    out: list[memoryview | None] = []
    offset, end = count * 8, len(body) - count
    for size, ok in zip(sizes.tolist(), whole, strict=True):
        if size == MISSING:
            out.append(None)
            continue
        if size < 0 or offset + size > end:
            raise FrameError(f"get reply claims a payload of {size} B past its body")
        out.append(body[offset : offset + size] if ok == 1 else None)
        offset += size
    if offset != end:
        raise FrameError(f"get reply has {end - offset} B past its last payload")
    return out


def map_body(slab_bytes: int, page_size: int, num_pages: int) -> bytes:
    return MAP_REPLY.pack(slab_bytes, page_size, num_pages)


def parse_map(body) -> tuple[int, int, int]:
    if len(body) != MAP_REPLY.size:
        raise FrameError(f"map reply is {len(body)} B, expected {MAP_REPLY.size}")
    return _layout(*MAP_REPLY.unpack(body))


def _layout(slab_bytes: int, page_size: int, num_pages: int) -> tuple[int, int, int]:
    if page_size < 1 or slab_bytes != page_size * num_pages:
        raise FrameError(f"map reply is inconsistent: {slab_bytes} B != {num_pages} pages of {page_size} B")
    return slab_bytes, page_size, num_pages


def device_map_body(slab_bytes: int, page_size: int, num_pages: int, handle: bytes,
                    device_uuid: str) -> bytes:
    return DEVICE_MAP_REPLY.pack(slab_bytes, page_size, num_pages, handle) + device_uuid.encode()


def parse_device_map(body) -> tuple[tuple[int, int, int], bytes, str]:
    """A MAP_DEVICE reply: the slab's layout, its IPC handle and its GPU's UUID."""
    if len(body) <= DEVICE_MAP_REPLY.size:
        raise FrameError(f"map_device reply is {len(body)} B, expected more than {DEVICE_MAP_REPLY.size}")
    *layout, handle = DEVICE_MAP_REPLY.unpack_from(body)
    return _layout(*layout), handle, bytes(body[DEVICE_MAP_REPLY.size :]).decode(errors="replace")


def get_mapped_buffers(results: list) -> list:
    """The body of a GET_MAPPED reply: one ``MAPPED_ENTRY`` per key (a ``Location`` as its
    size, segment count and generation; a copied payload as its size and ``INLINE``; a
    miss as ``MISSING``), then every location's ``SEGMENT``s in order, then the inline
    payloads, each sent as it is."""
    rows, segments, inline = [], [], []
    for r in results:
        if r is None:
            rows.append((MISSING, 0, 0, 0))
        elif isinstance(r, Location):
            rows.append((r.size, len(r.segments), SLABS.index(r.tier), r.generation))
            segments += r.segments
        else:
            rows.append((len(r), INLINE, 0, 0))
            inline.append(r)
    table = np.array(rows, dtype=MAPPED_ENTRY)
    return [table.tobytes(), np.array(segments, dtype=SEGMENT).tobytes(), *inline]


def parse_get_mapped(body: memoryview, count: int,
                     slab_bytes: dict[str, int]) -> list[Location | memoryview | None]:
    """A GET_MAPPED reply: per key a ``Location`` in one of the slabs the client mapped
    (``slab_bytes``: their sizes, by name), an inline payload (a view into ``body``) or
    ``None``. Every segment is checked against its slab's size, and a location's segments
    against its size."""
    table_len = count * MAPPED_ENTRY.itemsize
    if len(body) < table_len:
        raise FrameError(f"get_mapped reply of {len(body)} B cannot hold {count} entries")
    table = np.frombuffer(body, dtype=MAPPED_ENTRY, count=count).tolist()
    nseg = 0
    for size, n, _, _ in table:
        if size >= 0 and (n == 0 or n < INLINE):
            raise FrameError(f"get_mapped reply counts {n} segments for a block")
        nseg += n if size >= 0 and n > 0 else 0
    offset = table_len + nseg * SEGMENT.itemsize
    if offset > len(body):
        raise FrameError(f"get_mapped reply of {len(body)} B cannot hold its {nseg} segments")
    segments = np.frombuffer(body, dtype=SEGMENT, count=nseg, offset=table_len).tolist()
    limits = [slab_bytes.get(name) for name in SLABS]  # None: a slab this client did not map
    out: list[Location | memoryview | None] = []
    taken = 0
    for size, n, slab, generation in table:
        if size == MISSING:
            out.append(None)
        elif size < 0:
            raise FrameError(f"get_mapped reply claims a block of {size} B")
        elif n == INLINE:
            if offset + size > len(body):
                raise FrameError(f"get_mapped reply claims an inline payload of {size} B past its body")
            out.append(body[offset : offset + size])
            offset += size
        else:
            out.append(_location(size, tuple(segments[taken : taken + n]), slab, generation, limits))
            taken += n
    if offset != len(body):
        raise FrameError(f"get_mapped reply has {len(body) - offset} B past its last payload")
    return out


def _location(size: int, segments: tuple, slab: int, generation: int, limits: list) -> Location:
    """A GET_MAPPED entry's location, checked: its slab mapped, its segments adding up to its
    size and inside the slab."""
    limit = limits[slab] if slab < len(SLABS) else None
    if limit is None:
        raise FrameError(f"get_mapped reply locates a block in slab {slab}, which this client did not map")
    if len(segments) == 1:  # nearly every block: one run of pages
        whole = segments[0][1] == size and segments[0][0] + size <= limit
    else:
        whole = sum(n for _, n in segments) == size and all(start + n <= limit for start, n in segments)
    if not whole:
        raise FrameError(f"get_mapped reply locates {size} B in segments {segments} that do not add up "
                         f"or leave the {limit} B {SLABS[slab]} slab")
    return Location(segments, size, generation, SLABS[slab])


def body_size(buffers: list) -> int:
    return sum(memoryview(b).nbytes for b in buffers)
