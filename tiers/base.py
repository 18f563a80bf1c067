"""The contract every storage tier keeps, and the errors of the tiered store.

A tier is storage only: it keeps payloads under keys and knows nothing of the other
tiers, of eviction order or of pins. The ``TieredStore`` owns placement and decides what
goes where; it calls a tier only with blocks it has made room for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass


class StoreError(Exception):
    """Base class of the errors the tiered store raises for bad input or full tiers."""


class PayloadSizeError(StoreError, ValueError):
    """A payload does not fit the tier's fixed slot size (or is empty)."""


class StoreFullError(StoreError):
    """No tier can take a block: every resident block that could make room is pinned."""


class TierFull(Exception):
    """A tier's backing store ran out of room before its byte count said so (an LMDB map
    full of B-tree and not-yet-reusable pages): the caller should evict more and retry."""


class TierWriteError(Exception):
    """A tier could not write (disk unwritable, I/O error); nothing of the batch landed."""


class UnknownBlockError(StoreError, KeyError):
    """An operation named a block the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown block"


# A payload is one buffer, or a tuple of buffers whose bytes in order are the payload: a
# value read from the remote tier in two parts goes into a tier's pages without a join.
Payload = bytes | bytearray | memoryview | tuple


def payload_parts(payload: Payload) -> tuple[memoryview, ...]:
    """The payload's bytes as byte memoryviews, in order (one for a single buffer)."""
    parts = payload if isinstance(payload, tuple) else (payload,)
    return tuple(memoryview(p).cast("B") for p in parts)


@dataclass(frozen=True, slots=True)
class Block:
    """A block to store: its key, its parent's key (the namespace root for the first block),
    its depth in the chain (0 for the first block), and its payload.

    ``size`` is the payload length; it is given on its own so the metadata-only replay can
    count sizes without allocating payloads.
    """

    key: bytes
    parent: bytes
    depth: int
    payload: Payload | None  # None: metadata-only replay
    size: int


def make_block(key: bytes, parent: bytes, depth: int, payload: bytes | memoryview) -> Block:
    return Block(key, parent, depth, payload, len(payload))


@dataclass(frozen=True, slots=True)
class Location:
    """Where a block lies in a slab (see ``tiers.sharedmem``): its bytes are these
    segments, in order (one for nearly every block), of the tier named ``tier``."""

    segments: tuple[tuple[int, int], ...]  # (bytes from the start of the slab, length)
    size: int
    generation: int  # of the block's first page when located; a copy is whole if it is unchanged
    tier: str = "dram"

    @property
    def offset(self) -> int:
        return self.segments[0][0]


@dataclass(frozen=True, slots=True)
class StoredBlock:
    """What a tier that persists knows of a block after a restart (see ``Tier.scan``)."""

    key: bytes
    parent: bytes
    depth: int
    size: int


class Tier(ABC):
    """Storage for block payloads under 16-byte keys.

    Not thread-safe on its own: the store calls it under its lock.
    """

    name: str
    capacity_bytes: int
    persistent: bool = False

    @abstractmethod
    def footprint(self, size: int) -> int:
        """Bytes of capacity a payload of ``size`` bytes takes here.

        Raises ``PayloadSizeError`` when such a payload cannot be stored here at all.
        """

    @abstractmethod
    def contains(self, key: bytes) -> bool: ...

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """A copy of the payload, or ``None`` when absent or unreadable (a corrupt record
        is removed by the tier and reported through ``corrupt_reads``)."""

    def read_into(self, key: bytes, out: memoryview) -> int:
        """Copy the payload into ``out``; its size, or -1 when absent or unreadable.
        The caller has checked that ``out`` is large enough (the store knows sizes)."""
        payload = self.get(key)
        if payload is None:
            return -1
        out[: len(payload)] = payload
        return len(payload)

    def read_many_into(self, keys: list[bytes], dests: list[memoryview]) -> list[int]:
        """``read_into`` for a batch (tiers override it to share one transaction)."""
        return [self.read_into(k, d) for k, d in zip(keys, dests, strict=True)]

    locates: bool = False  # answers ``locate_many`` (a host slab, or a shared GPU slab)
    shared: bool = False  # other processes on this host may map its memory (``tiers.sharedmem``)
    on_gpu: bool = False  # its memory is a GPU's (a located block there cannot be sent from)
    reserves: bool = False  # put_many takes a block without payload: its pages, for fill or view

    def locate_many(self, keys: list[bytes]) -> list[Location | None]:
        """Where each block lies in the tier's memory (to send from, or for a same-host
        client to copy out of when it is shared); ``None`` for blocks it lacks
        (every block, for tiers without ``locates``)."""
        return [None] * len(keys)

    def view(self, where: Location) -> list[memoryview]:
        """The bytes at a location ``locate_many`` gave, a view per segment (valid while
        it is ``current``)."""
        raise NotImplementedError(f"{self.name} locates no blocks")

    def fill(self, key: bytes, payload: Payload) -> None:
        """Write the payload of a block ``put_many`` took without one (``reserves``)."""
        raise NotImplementedError(f"{self.name} reserves no blocks")

    def current(self, located: list[Location]) -> list[bool]:
        """Whether each location still holds the block it was located for."""
        raise NotImplementedError(f"{self.name} locates no blocks")

    @abstractmethod
    def put_many(self, blocks: list[Block]) -> None:
        """Store every block; the store has made room. All or nothing where the tier can;
        raises ``TierFull`` or ``TierWriteError`` when nothing was written."""

    @abstractmethod
    def delete_many(self, keys: list[bytes]) -> None: ...

    def scan(self) -> Iterator[StoredBlock]:
        """Blocks that survived a restart (only persistent tiers have any)."""
        return iter(())

    def flush(self) -> None:  # noqa: B027 - a no-op is the right default for volatile tiers
        """Make what was written durable (a no-op for volatile tiers)."""

    def close(self) -> None:  # noqa: B027 - most tiers free their memory with the object
        """Release the tier's resources."""

    corrupt_reads: int = 0

    def describe(self) -> dict:
        return {"name": self.name, "capacity_bytes": self.capacity_bytes}

