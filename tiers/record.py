"""The on-flash record of one block: a fixed header, then the payload.

::

    offset  size  field
    0       4     magic b"KVTB"
    4       1     format version (1)
    5       3     reserved (0)
    8       4     depth (u32, 0 for the first block of a chain)
    12      16    parent key
    28      8     payload length (u64)
    36      8     xxh3-64 of the payload (u64)
    44      ...   payload

All integers little-endian. A record whose header or checksum does not match is never
served: the reader treats it as a miss.
"""

from __future__ import annotations

import struct

import xxhash

from tiers.base import Payload, payload_parts

MAGIC = b"KVTB"
VERSION = 1
_HEADER = struct.Struct("<4sB3xI16sQQ")
HEADER_SIZE = _HEADER.size  # 44


class CorruptRecord(Exception):
    """A stored record failed its magic, version, length or checksum check."""


def encode(parent: bytes, depth: int, payload: Payload) -> bytes:
    parts = payload_parts(payload)
    digest = xxhash.xxh3_64()
    for part in parts:
        digest.update(part)
    length = sum(part.nbytes for part in parts)
    header = _HEADER.pack(MAGIC, VERSION, depth, parent, length, digest.intdigest())
    return b"".join((header, *parts))


def decode_header(record) -> tuple[bytes, int, int, int]:
    """(parent, depth, payload length, checksum) of a record, checking magic and version."""
    if len(record) < HEADER_SIZE:
        raise CorruptRecord(f"record of {len(record)} B is shorter than its header")
    magic, version, depth, parent, length, checksum = _HEADER.unpack_from(record)
    if magic != MAGIC or version != VERSION:
        raise CorruptRecord(f"bad magic/version {magic!r}/{version}")
    if HEADER_SIZE + length != len(record):
        raise CorruptRecord(f"header says {length} B of payload, record holds {len(record) - HEADER_SIZE}")
    return parent, depth, length, checksum


def payload_of(record) -> memoryview:
    """The verified payload of a record (a view into it), or ``CorruptRecord``."""
    _, _, _, checksum = decode_header(record)
    payload = memoryview(record)[HEADER_SIZE:]
    if xxhash.xxh3_64_intdigest(payload) != checksum:
        raise CorruptRecord("payload checksum mismatch")
    return payload

