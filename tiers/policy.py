"""Eviction policies: the order in which a tier gives up its unpinned blocks.

A policy tracks the keys resident in one tier and yields eviction candidates, most
evictable first. It never evicts anything itself: the ``TieredStore`` picks victims from
``candidates()`` (skipping blocks whose loss would strand descendants when it can) and
calls ``remove``. Policies see a block's metadata on insert and touch, so smarter
policies can weigh depth, size or hit counts; they must not change it.

Adding a policy is one class and one entry in ``POLICIES``.
"""

from __future__ import annotations

import heapq
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


class FIFOPolicy(LRUPolicy):
    """First in, first out: touches change nothing. The baseline that ignores reuse."""

    def touch(self, key: bytes, meta: Any) -> None:
        pass


class SLRUPolicy(EvictionPolicy):
    """Segmented LRU: new blocks enter a probation LRU; a hit moves a block to a protected
    LRU of at most ``protected_share`` of the blocks, whose overflow returns to probation.
    Evicts probation first. A hit is ``meta.hits`` growing (puts touch too, and a put is
    not a reuse). Two ``OrderedDict`` s: O(1) per operation."""

    def __init__(self, protected_share: float = 0.2) -> None:
        self._probation: OrderedDict[bytes, int] = OrderedDict()  # key -> hits seen; oldest first
        self._protected: OrderedDict[bytes, None] = OrderedDict()
        self._share = protected_share

    def insert(self, key: bytes, meta: Any) -> None:
        self._protected.pop(key, None)
        self._probation[key] = meta.hits
        self._probation.move_to_end(key)

    def touch(self, key: bytes, meta: Any) -> None:
        if key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._probation:
            if meta.hits == self._probation[key]:
                self._probation.move_to_end(key)
                return
            del self._probation[key]
            self._protected[key] = None
            limit = max(1, int(len(self) * self._share))
            while len(self._protected) > limit:
                old, _ = self._protected.popitem(last=False)
                self._probation[old] = -1  # any later hit promotes it again

    def remove(self, key: bytes) -> None:
        if self._probation.pop(key, 0) == 0:
            self._protected.pop(key, None)

    def candidates(self) -> Iterator[bytes]:
        yield from self._probation
        yield from self._protected

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)


class MultiQueuePolicy(EvictionPolicy):
    """Recency within frequency classes, with a memory of evicted blocks: the default.

    Why not plain LRU: in a prefix cache most blocks are used once (the unique tail of a
    prompt), while a block that has been reused is far more likely to be reused again (on
    the Mooncake conversation trace 26% of blocks come back after one use, 42% after two,
    over 60% after four). LRU gives both the same time in the cache. Here a block's class
    is ``floor(log2(uses))`` (1, 2-3, 4-7, 8+ uses) and each class is an LRU queue; a
    block's eviction priority is its last-touch time plus ``offset × class``, so reused
    blocks stay longer in proportion to how often they came back (Multi-Queue, Zhou et al.
    2001, built for second-level caches whose reuse distances are long, like this one).

    - Uses count store hits (``meta.hits``), not puts, and survive eviction: a bounded
      history (one entry per resident block at most) remembers the uses of evicted blocks,
      so a conversation whose blocks were evicted between turns comes back in its class.
    - The offset adapts online (no per-trace tuning): when evicted once-used blocks come
      back (a history hit) more often than evicted reused ones, the cache is too hard on
      new blocks and the offset shrinks, toward plain LRU; otherwise it grows. At large
      capacities this converges to LRU's behaviour, at small ones it protects reuse.
    - Time is counted in inserts and the offset in multiples of the resident count, so
      nothing depends on the tier's size or the trace's clock.

    Each class is an ``OrderedDict`` (O(1) touch and removal); ``candidates`` merges the
    few class queues by priority (O(log classes) per candidate).
    """

    _CLASSES = 4
    _ADAPT_EVERY = 256  # removals between offset updates; counts halve at each update
    _STEP = 1.2
    _OFFSET_RANGE = (1 / 64, 2.0)  # in resident-block counts of insert time

    def __init__(self) -> None:
        self._queues: list[OrderedDict[bytes, int]] = [OrderedDict() for _ in range(self._CLASSES)]
        self._uses: dict[bytes, tuple[int, int, int]] = {}  # key -> (earlier uses, hits at insert, class)
        self._history: OrderedDict[bytes, int] = OrderedDict()  # evicted key -> uses; oldest first
        self._clock = 0
        self._offset = 0.25
        self._returned = [0.0, 0.0]  # history hits of once-used / reused blocks
        self._evicted = [1.0, 1.0]
        self._removals = 0

    def insert(self, key: bytes, meta: Any) -> None:
        self._clock += 1
        earlier = self._history.pop(key, None)
        if earlier is not None:
            self._returned[earlier > 1] += 1
        self._uses[key] = (earlier or 0, meta.hits, -1)
        self._place(key, meta)

    def touch(self, key: bytes, meta: Any) -> None:
        if key in self._uses:
            self._place(key, meta)

    def _place(self, key: bytes, meta: Any) -> None:
        earlier, hits0, old = self._uses[key]
        uses = earlier + meta.hits - hits0 + 1
        c = min(uses.bit_length() - 1, self._CLASSES - 1)
        if old not in (-1, c):
            del self._queues[old][key]
        q = self._queues[c]
        q[key] = self._clock
        q.move_to_end(key)
        self._uses[key] = (earlier, hits0, c)

    def remove(self, key: bytes) -> None:
        entry = self._uses.pop(key, None)
        if entry is None:
            return
        earlier, _, c = entry
        del self._queues[c][key]
        uses = earlier + 1 if c == 0 else 1 << c  # the class floor is enough to classify it later
        self._history[key] = uses
        while len(self._history) > max(len(self._uses), 1):
            self._history.popitem(last=False)
        self._evicted[uses > 1] += 1
        self._removals += 1
        if self._removals % self._ADAPT_EVERY == 0:
            self._adapt()

    def _adapt(self) -> None:
        """Give time to the group whose evicted blocks come back more often."""
        once = self._returned[0] / self._evicted[0]
        reused = self._returned[1] / self._evicted[1]
        lo, hi = self._OFFSET_RANGE
        grown, shrunk = self._offset * self._STEP, self._offset / self._STEP
        self._offset = min(hi, grown) if reused > once else max(lo, shrunk)
        self._returned = [x / 2 for x in self._returned]
        self._evicted = [x / 2 for x in self._evicted]

    def candidates(self) -> Iterator[bytes]:
        step = self._offset * len(self._uses)
        ranked = [_by_priority(q, c * step) for c, q in enumerate(self._queues) if q]
        return (key for _, key in heapq.merge(*ranked))

    def __len__(self) -> int:
        return len(self._uses)


def _by_priority(queue: OrderedDict[bytes, int], offset: float) -> Iterator[tuple[float, bytes]]:
    return ((clock + offset, key) for key, clock in queue.items())


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "slru": SLRUPolicy,
    "mq": MultiQueuePolicy,
}
DEFAULT_POLICY = "mq"


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by name; ``"default"`` is whatever the store uses by default."""
    key = DEFAULT_POLICY if name == "default" else name
    if key not in POLICIES:
        raise ValueError(f"eviction policy {name!r} is unknown; choose one of "
                         f"{['default', *POLICIES]}")
    return POLICIES[key]()
