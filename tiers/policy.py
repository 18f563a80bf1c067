"""Eviction policies: the order in which a tier gives up its unpinned blocks.

A policy tracks the keys resident in one tier and yields eviction candidates, most
evictable first. It never evicts anything itself: the ``TieredStore`` picks victims from
``candidates()`` (skipping blocks whose loss would strand descendants when it can) and
calls ``remove``. Policies see a block's metadata on insert and touch, so smarter
policies can weigh depth, size or hit counts; they must not change it.

Adding a policy is one class and one entry in ``POLICIES``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any


class EvictionPolicy(ABC):
    @abstractmethod
    def insert(self, key: bytes, meta: Any) -> None:
        """``key`` became resident (and evictable) in the tier."""

    @abstractmethod
    def touch(self, key: bytes, meta: Any) -> None:
        """``key`` was read or written again."""

    @abstractmethod
    def remove(self, key: bytes) -> None:
        """``key`` left the tier or was pinned; unknown keys are ignored."""

    @abstractmethod
    def candidates(self) -> Iterator[bytes]:
        """Evictable keys, most evictable first. The caller does not mutate the policy
        while it iterates."""

    @abstractmethod
    def __len__(self) -> int: ...


class LRUPolicy(EvictionPolicy):
    """Least recently used first. An ``OrderedDict`` gives O(1) touch and eviction."""

    def __init__(self) -> None:
        self._order: OrderedDict[bytes, None] = OrderedDict()  # oldest first

    def insert(self, key: bytes, meta: Any) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def touch(self, key: bytes, meta: Any) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def remove(self, key: bytes) -> None:
        self._order.pop(key, None)

    def candidates(self) -> Iterator[bytes]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


POLICIES: dict[str, type[EvictionPolicy]] = {"lru": LRUPolicy}
DEFAULT_POLICY = "lru"


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by name; ``"default"`` is whatever the store uses by default."""
    key = DEFAULT_POLICY if name == "default" else name
    if key not in POLICIES:
        raise ValueError(f"eviction policy {name!r} is unknown; choose one of "
                         f"{['default', *POLICIES]}")
    return POLICIES[key]()
