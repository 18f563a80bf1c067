"""A tier that counts sizes but keeps no bytes: the in-memory twin for trace replay.

It lets the hit-rate benchmark run a million blocks through the real ``TieredStore``
(placement, eviction, promotion, pins, counters) without allocating a payload.
"""

from __future__ import annotations

from tiers.base import Block, PayloadSizeError, Tier

_EMPTY = b""


class MetadataTier(Tier):
    def __init__(self, name: str, capacity_bytes: int):
        self.name = name
        self.capacity_bytes = capacity_bytes
        self._keys: set[bytes] = set()

    def footprint(self, size: int) -> int:
        if size <= 0:
            raise PayloadSizeError(f"{self.name}: block size must be positive, got {size}")
        return size

    def contains(self, key: bytes) -> bool:
        return key in self._keys

    def get(self, key: bytes) -> bytes | None:
        return _EMPTY if key in self._keys else None

    def read_into(self, key: bytes, out: memoryview) -> int:
        return 0 if key in self._keys else -1

    def put_many(self, blocks: list[Block]) -> None:
        self._keys.update(b.key for b in blocks)

    def delete_many(self, keys: list[bytes]) -> None:
        self._keys.difference_update(keys)
