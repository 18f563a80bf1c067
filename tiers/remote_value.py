"""How a block is laid out in a remote key-value store (Redis Cluster, Valkey): its keys
and its value, sized for the store's allocator.

Keys. ``kvtier:{<32 hex digits>}``: the block key in hex inside an explicit hash tag. Hex
has no ``{`` or ``}``, so Redis Cluster's hash-tag rule (hash only what lies between the
first ``{`` and the next ``}``) sees exactly the tag we wrote: a raw key byte ``{`` can
never make it hash a substring. Every block gets its own tag, so a chain's blocks spread
over every slot (see docs/remote.md for why, measured); a block's two parts share a slot.

Value. The 16-byte block key, then the flash record (``tiers.record``: magic, format
version, depth, parent, length, xxh3-64 of the payload, then the payload)::

    key (16) ‖ record header (44) ‖ payload

The key binds the value to the Redis key it was read from, so a valid record copied under
another key is refused as foreign. A value just over a jemalloc size class (a 2 MiB
payload plus its 60 bytes) would take the next class, 25% more memory; such a value is cut
at the class boundary into a head (``kvtier:{hex}``, exactly the class) and a tail
(``kvtier:{hex}+``, the few bytes left). The tail is written before the head and both are
read in one pipeline (one slot, one node), so a reader never takes a head without its tail
for whole.
"""

from __future__ import annotations

import xxhash

from tiers import record
from tiers.base import Block

PREFIX = b"kvtier:"
KEY_BYTES = 16
OVERHEAD = KEY_BYTES + record.HEADER_SIZE  # bytes of a value besides the payload
SDS_OVERHEAD = 16  # a Redis string's header and terminator (9 + 1 B for large ones), rounded up
_MIN_SAVING = 1 / 16  # split a value only when that saves at least this share of its memory
_PER_KEY_COST = 128  # a second key's dict entry, object and name (MEMORY USAGE of a tiny value)


class ForeignValue(record.CorruptRecord):
    """A value that is well formed but belongs to another key."""


def redis_keys(key: bytes) -> tuple[bytes, bytes]:
    """(head key, tail key) of a block."""
    head = PREFIX + b"{" + key.hex().encode() + b"}"
    return head, head + b"+"


def _spacing(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length() - 3)


def size_class(n: int) -> int:
    """jemalloc's size class for an allocation of ``n`` bytes (four classes per doubling;
    checked against Redis's ``MEMORY USAGE`` in benchmarks/remote_sizing.py)."""
    if n <= 16:
        return 16
    return -(-n // _spacing(n)) * _spacing(n)


def split_at(n: int) -> int:
    """Where to cut a value of ``n`` bytes (``n`` itself: keep it whole). A value is cut so
    that its head fills the largest size class below it, when head and tail together take
    at least ``_MIN_SAVING`` less memory than the whole value would."""
    alloc = n + SDS_OVERHEAD
    below = (alloc - 1) // _spacing(alloc - 1) * _spacing(alloc - 1)  # largest class < alloc
    cut = below - SDS_OVERHEAD
    if cut <= 0:
        return n
    parts = below + size_class(n - cut + SDS_OVERHEAD) + _PER_KEY_COST
    return cut if parts <= size_class(alloc) * (1 - _MIN_SAVING) else n


def encode(block: Block) -> tuple[bytes, bytes | None]:
    """(head, tail or None) of a block's value; the payload is copied once."""
    value = block.key + record.encode(block.parent, block.depth, block.payload)
    cut = split_at(len(value))
    if cut == len(value):
        return value, None
    return value[:cut], value[cut:]


def decode(key: bytes, head: bytes | None, tail: bytes | None) -> Block | None:
    """The block a remote value holds: ``None`` when absent (no head), ``CorruptRecord``
    when malformed, torn (head without its tail), failing its checksum, or another key's.

    Nothing is copied: a value kept whole is served in place (the payload is a view into
    ``head``); a cut value's header is read from the head and its checksum streamed over
    the head's payload bytes and the tail, and its payload is the two parts (a tier copies
    them into its pages in order; see ``tiers.base.Payload``)."""
    if head is None:
        return None
    view = memoryview(head)
    if view[:KEY_BYTES] != key:
        raise ForeignValue(f"value under {key.hex()} is for another key")
    if tail is None:
        rec = view[KEY_BYTES:]
        parent, depth, length, _ = record.decode_header(rec)
        return Block(key, parent, depth, record.payload_of(rec), length)
    if len(view) < OVERHEAD:
        raise record.CorruptRecord(f"head of {len(view)} B is shorter than its header")
    # The header's own checks (magic, version, length) against the two parts' total length.
    magic, version, depth, parent, length, checksum = record._HEADER.unpack_from(view, KEY_BYTES)
    if magic != record.MAGIC or version != record.VERSION:
        raise record.CorruptRecord(f"bad magic/version {magic!r}/{version}")
    first = view[OVERHEAD:]
    if length != len(first) + len(tail):
        raise record.CorruptRecord(f"header says {length} B of payload, head and tail hold "
                                   f"{len(first) + len(tail)}")
    digest = xxhash.xxh3_64(first)
    digest.update(tail)
    if digest.intdigest() != checksum:
        raise record.CorruptRecord("payload checksum mismatch")
    return Block(key, parent, depth, (first, memoryview(tail)), length)
