"""Eviction policies: the order in which a tier gives up its unpinned blocks.

A policy tracks the keys resident in one tier and yields eviction candidates, most
evictable first. It never evicts anything itself: the ``TieredStore`` picks victims from
``candidates()`` (chain tails first, ``tiers.victims``) and calls ``remove``. Policies see
a block's metadata on insert and touch, so they can weigh hit counts; they must not
change it.

This module holds the base and the cheap policies (O(1) or O(log classes) per operation,
a few hundred bytes per block). ``tiers.adaptive`` holds the simulating one;
``tiers.registry`` names them all.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Container, Iterator
from typing import Any, Protocol

# Classes of a multi-queue entry besides its use class.
_UNPLACED = -1  # inserted, not yet in a queue
_COLD = -2  # new, from a request of a shape whose blocks are seldom reused: the cold queue


class EvictionPolicy(ABC):
    """Called by ``TieredStore`` under its lock: every method must be cheap."""

    learns = False  # True: ``learn`` has work to do, off the store's lock

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

    def observe(self, keys: list[bytes]) -> None:
        """A request's keys from depth 0, as the store is asked about them (a lookup),
        whether or not they are resident. O(keys): it runs under the store's lock."""
        return None

    def learn(self, limit: int | None = None) -> bool:
        """Catch up on what ``observe`` queued (at most ``limit`` requests); True while more
        waits. The store calls it without its lock; only policies with ``learns`` do anything."""
        return False

    def stats(self) -> dict:
        """Counters for the store's stats (none for most policies)."""
        return {}

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


def remember(history: OrderedDict[bytes, Any], key: bytes, value: Any, limit: int) -> None:
    """Record an evicted ``key`` in ``history`` (oldest first), keeping at most ``limit``
    entries (at least one)."""
    history[key] = value
    limit = max(limit, 1)
    while len(history) > limit:
        history.popitem(last=False)


def resident_prefix(keys: list[bytes], resident: Container[bytes]) -> int:
    """How many of a request's leading keys are in ``resident``."""
    for n, key in enumerate(keys):
        if key not in resident:
            return n
    return len(keys)


class Admission(Protocol):
    """Learns which request shapes' new blocks come back (``tiers.adaptive.ReuseByShape``)."""

    SHAPES: int

    def shape(self, resident: int, new: int) -> int: ...

    def new_block(self, shape: int, ratio: float | None = None) -> bool: ...

    def reused(self, shape: int) -> None: ...


class DepthFloor(Protocol):
    """The fewest uses each block of a request counts as (``tiers.adaptive.ConversationDepth``)."""

    def floor(self, keys: list[bytes], resident: int) -> int: ...


class MultiQueuePolicy(EvictionPolicy):
    """Recency within frequency classes, with a memory of evicted blocks (``mq``).

    Why not plain LRU: in a prefix cache most blocks are used once (the unique tail of a
    prompt), while a block that has been reused is far likelier to be reused again; LRU
    gives both the same time in the cache. Here a block's class is ``floor(log2(uses))``
    (1, 2-3, 4-7, 8+ uses) and each class is an LRU queue; a block's eviction priority is
    its last-touch time plus ``offset x class``, so reused blocks stay longer in proportion
    to how often they came back (Multi-Queue, Zhou et al. 2001).

    - Uses count store hits (``meta.hits``), not puts, and survive eviction: a bounded
      history (``history`` entries per resident block) remembers the uses of evicted
      blocks, so a conversation evicted between turns comes back in its class.
    - The offset adapts online: when evicted once-used blocks come back more often than
      evicted reused ones, it shrinks toward plain LRU; otherwise it grows.
    - Time is counted in inserts and the offset in multiples of the resident count, so
      nothing depends on the tier's size or the trace's clock.
    - ``admission`` and ``depth`` are hooks for ``tiers.adaptive`` (``mq`` uses neither):
      new blocks of cold request shapes wait in a cold queue until their first hit; the
      blocks of a request count at least its depth floor in uses.

    Each class is an ``OrderedDict`` (O(1) touch and removal); ``candidates`` merges the
    few class queues by priority (O(log classes) per candidate).
    """

    _CLASSES = 4
    _TOP_USES = 1 << (_CLASSES - 1)  # uses from which a block is in the top class
    _ADAPT_EVERY = 256  # removals between offset updates; counts halve at each update
    _STEP = 1.2
    _MIN_OFFSET = 1 / 64  # in resident-block counts of insert time
    COLD_OFFSET = 1.0  # how much older than its insert time a cold block ranks, likewise

    def __init__(self, history: int = 1, max_offset: float = 2.0,
                 admission: Admission | None = None, depth: DepthFloor | None = None,
                 cold_offset: float = COLD_OFFSET) -> None:
        """``history``: evicted keys remembered, per resident key. ``max_offset``: the
        most extra time per class, in resident-block counts of insert time.
        ``admission``: when given, a new block whose request's shape it calls cold goes
        in the cold queue, ``cold_offset`` resident-counts older than its insert time,
        until its first hit (needs ``observe``). ``depth``: when given, the blocks placed
        after each ``observe`` count at least the request's ``depth.floor`` uses."""
        self._cold_offset = cold_offset
        self._queues: list[OrderedDict[bytes, int]] = [OrderedDict() for _ in range(self._CLASSES)]
        self._cold: OrderedDict[bytes, int] = OrderedDict()
        # key -> (earlier uses, hits at insert, class, shape of its request until first reused or -1)
        self._uses: dict[bytes, tuple[int, int, int, int]] = {}
        # evicted key -> uses, or ``_pending_reuse(shape, uses)`` (negative) for a block whose
        # reuse is yet to be counted against its request's shape
        self._history: OrderedDict[bytes, int] = OrderedDict()  # oldest first
        self._history_factor = history
        self._max_offset = max_offset
        self._admission = admission
        self._depth = depth
        self._floor = 1  # the observed request's ``depth.floor``
        # the ratio ``admission`` calls shapes cold by (None: its own); ``tiers.adaptive`` sets it
        self.cold_ratio: float | None = None
        self._new: dict[bytes, int] = {}  # the observed request's blocks not resident -> its shape
        self._clock = 0
        self._offset = min(0.25, max_offset)
        self._returned = [0.0, 0.0]  # history hits of once-used / reused blocks
        self._evicted = [1.0, 1.0]
        self._removals = 0

    def observe(self, keys: list[bytes]) -> None:
        if self._depth is not None:
            self._floor = self._depth.floor(keys, len(self._uses))
        if self._admission is None:
            return
        resident = resident_prefix(keys, self._uses)
        shape = self._admission.shape(resident, len(keys) - resident)
        self._new = dict.fromkeys(keys[resident:], shape)

    @property
    def floor(self) -> int:
        """The last observed request's depth floor (1 without ``depth``)."""
        return self._floor

    def insert(self, key: bytes, meta: Any) -> None:
        self._clock += 1
        earlier = self._history.pop(key, None)
        shape = self._new.pop(key, -1)
        if earlier is None:
            earlier = 0
            if shape != -1 and self._admission.new_block(shape, self.cold_ratio):
                self._uses[key] = (0, meta.hits, _COLD, shape)
                self._cold[key] = self._clock
                return
        else:
            if earlier < 0:  # an evicted block's first reuse
                shape, earlier = _pending_reuse_of(earlier, self._admission.SHAPES)
                self._admission.reused(shape)
            self._returned[earlier > 1] += 1
            shape = -1  # not new: its request's shape says nothing about it
        entry = self._uses[key] = (earlier, meta.hits, _UNPLACED, shape)
        self._place(key, earlier + 1, entry)

    def touch(self, key: bytes, meta: Any) -> None:
        entry = self._uses.get(key)
        if entry is None:
            return
        earlier, hits0, c, shape = entry
        if meta.hits == hits0:  # a put's touch: fresher, not reused
            if c == _COLD:
                self._cold[key] = self._clock
                self._cold.move_to_end(key)
                return
        elif shape != -1:  # its first hit
            self._admission.reused(shape)
            if c == _COLD:
                del self._cold[key]
                c = _UNPLACED
            entry = self._uses[key] = (earlier, hits0, c, -1)
        self._place(key, earlier + meta.hits - hits0 + 1, entry)

    def _place(self, key: bytes, uses: int, entry: tuple[int, int, int, int]) -> None:
        """Put ``key`` at the fresh end of its use class's queue (``uses``, or the
        observed request's floor when that is more); ``entry`` is its row in ``_uses``,
        whose class is updated if it changed."""
        uses = max(uses, self._floor)
        c = uses.bit_length() - 1 if uses < self._TOP_USES else self._CLASSES - 1
        old = entry[2]
        if c == old:
            q = self._queues[c]
            q[key] = self._clock
            q.move_to_end(key)
            return
        if old != _UNPLACED:
            del self._queues[old][key]
        self._queues[c][key] = self._clock  # a new key goes in at the fresh end
        self._uses[key] = (entry[0], entry[1], c, entry[3])

    def remove(self, key: bytes) -> None:
        entry = self._uses.pop(key, None)
        if entry is None:
            return
        earlier, _, c, shape = entry
        if c == _COLD:
            del self._cold[key]
            uses = 1
        else:
            del self._queues[c][key]
            uses = earlier + 1 if c == 0 else 1 << c  # the class floor is enough to classify it later
        entry = uses if shape == -1 else _pending_reuse(shape, uses, self._admission.SHAPES)
        remember(self._history, key, entry, self._history_factor * len(self._uses))
        self._evicted[uses > 1] += 1
        self._removals += 1
        if self._removals % self._ADAPT_EVERY == 0:
            self._adapt()

    def _adapt(self) -> None:
        """Give time to the group whose evicted blocks come back more often."""
        once = self._returned[0] / self._evicted[0]
        reused = self._returned[1] / self._evicted[1]
        grown, shrunk = self._offset * self._STEP, self._offset / self._STEP
        floor = min(self._MIN_OFFSET, self._max_offset)
        self._offset = min(self._max_offset, grown) if reused > once else max(floor, shrunk)
        self._returned = [x / 2 for x in self._returned]
        self._evicted = [x / 2 for x in self._evicted]

    def candidates(self) -> Iterator[bytes]:
        return self.order(self._max_offset)

    def order(self, offset_cap: float, cold_offset: float | None = None) -> Iterator[bytes]:
        """The candidates as if the offset were at most ``offset_cap`` (0: by recency
        alone, to the resolution of the insert clock), and cold blocks ``cold_offset``
        resident-counts older (when given, else this policy's own)."""
        step = min(self._offset, offset_cap) * len(self._uses)
        return self._merged([c * step for c in range(self._CLASSES)], cold_offset)

    def hot_order(self, offset: float) -> Iterator[bytes]:
        """The candidates by recency alone, except that blocks of the top use class (8 or
        more uses) rank ``offset`` resident-counts fresher; cold blocks still go first."""
        return self._merged([0] * (self._CLASSES - 1) + [offset * len(self._uses)])

    def _merged(self, offsets: list[float], cold_offset: float | None = None) -> Iterator[bytes]:
        """The class queues merged by last touch plus ``offsets[class]`` (in inserts), and
        the cold queue ``cold_offset`` (or this policy's own) resident-counts older."""
        queues = [(q, offsets[c]) for c, q in enumerate(self._queues) if q]
        if self._cold:
            cold = self._cold_offset if cold_offset is None else cold_offset
            queues.append((self._cold, -cold * len(self._uses)))
        return _merge_by_priority(queues)

    def __len__(self) -> int:
        return len(self._uses)


def _pending_reuse(shape: int, uses: int, shapes: int) -> int:
    """A history entry for an evicted block whose reuse is yet to be credited to the
    shape of its request (one of ``shapes``): negative, and it keeps the block's uses
    (more than one where a depth floor raised them)."""
    return -1 - shape - shapes * (uses - 1)


def _pending_reuse_of(entry: int, shapes: int) -> tuple[int, int]:
    """``(shape, uses)`` of a ``_pending_reuse`` entry."""
    extra, shape = divmod(-1 - entry, shapes)
    return shape, extra + 1


def _merge_by_priority(queues: list[tuple[OrderedDict[bytes, int], float]]) -> Iterator[bytes]:
    """The keys of ``(queue, offset)`` pairs, each queue ordered by its clock values,
    merged by clock plus offset (ties by key): ``heapq.merge`` without a tuple per key."""
    heads = []  # [priority, key, the rest of its queue, offset]; keys are unique, so ties end at the key
    for queue, offset in queues:
        items = iter(queue.items())
        key, clock = next(items)
        heads.append([clock + offset, key, items, offset])
    heapq.heapify(heads)
    while heads:
        head = heads[0]
        yield head[1]
        following = next(head[2], None)
        if following is None:
            heapq.heappop(heads)
        else:
            head[1], head[0] = following[0], following[1] + head[3]
            heapq.heapreplace(heads, head)
