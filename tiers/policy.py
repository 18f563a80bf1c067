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
import itertools
import random
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator
from typing import Any

# Classes of a multi-queue entry besides its use class.
_UNPLACED = -1  # inserted, not yet in a queue
_COLD = -2  # new, from a request of a shape whose blocks are seldom reused: the cold queue

# How many blocks with children the victim search skips before it gives up looking for a
# leaf; bounds the search so eviction stays O(1) in the common case.
LEAF_SCAN_LIMIT = 64


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

    def observe(self, keys: list[bytes]) -> None:
        """A request's keys from depth 0, as the store is asked about them (a lookup),
        whether or not they are resident. Only policies that simulate need it."""
        return None

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


class BimodalPolicy(EvictionPolicy):
    """LRU that holds on to a stable set of chains when the chains in use do not fit.

    Why: when running chains (agent loops a few seconds apart, chat sessions) need more
    room than the tier has, LRU evicts each one just before it comes back, and every
    request re-inserts what it lost only to push out the next chain's blocks. Belady's
    optimum instead keeps some chains whole and lets the rest go. Bimodal insertion
    (Qureshi et al. 2007), taken per request rather than per block, does that online:

    - A request that extends a resident chain cleanly (a resident prefix, and none of its
      missing blocks evicted here before) puts its new blocks at the fresh end, as LRU does.
    - Any other request (a new chain, or one that lost blocks to eviction and brings them
      back) puts its new blocks at the evictable end, deepest first, except one request
      in ``every`` drawn at random (seeded; a fixed one in ``every`` would always pick the
      same request of a periodic workload); so chains that thrash go first, the resident
      ones stay, and the set still turns over.
    - A hit moves a block to the fresh end, and so does the put of a clean request.

    On its own it loses to LRU wherever the working set fits (up to 24 points on the
    synthetic chat workloads): it is one of the orders ``AdaptivePolicy`` chooses from,
    and wins on agent loops at 2% of distinct blocks. Needs ``observe``; without it,
    inserts go where the last observed request sent them (the fresh end at first).
    O(1) per operation; remembers one evicted key per resident key.
    """

    EVERY = 8

    def __init__(self, every: int = EVERY, seed: int = 0) -> None:
        self._order: OrderedDict[bytes, int] = OrderedDict()  # key -> hits when last moved fresh
        self._evicted: OrderedDict[bytes, None] = OrderedDict()  # oldest first
        self._chance = 1 / every
        self._random = random.Random(seed)
        self._fresh = True  # where the observed request's new blocks go

    def observe(self, keys: list[bytes]) -> None:
        resident = resident_prefix(keys, self._order)
        clean = resident > 0 and not any(k in self._evicted for k in keys[resident:])
        self._fresh = clean or self._random.random() < self._chance

    def insert(self, key: bytes, meta: Any) -> None:
        self._evicted.pop(key, None)
        self._order[key] = meta.hits
        self._order.move_to_end(key, last=self._fresh)

    def touch(self, key: bytes, meta: Any) -> None:
        hits = self._order.get(key)
        if hits is not None and (meta.hits != hits or self._fresh):
            self._order[key] = meta.hits
            self._order.move_to_end(key)

    def remove(self, key: bytes) -> None:
        if self._order.pop(key, None) is None:
            return
        remember(self._evicted, key, None, len(self._order))

    def candidates(self) -> Iterator[bytes]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


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


class ReuseByShape:
    """The learned chance that a request's new blocks are used again, by the request's
    shape: how many of its leading blocks were resident, and how many it adds (each as a
    power-of-two bucket, so 15 by 15 shapes).

    Why: whether a new block comes back depends on what kind of request brought it, and
    the shape tells kinds apart without knowing the workload. On the Mooncake trace a
    first turn that adds 2-3 blocks is used again 41% of the time, a follow-up turn that
    adds 16-31 blocks 6%; a chat turn deep into a long conversation is likelier to have a
    successor than an early one; a question under a shared system prompt never comes back.
    The rates are learned online from the blocks themselves: a block counts as reused when
    it is hit, or comes back after eviction while the history remembers it. Counts halve
    every ``HALVE_EVERY`` events, so the model follows a changing workload.

    ``cold(shape)``: the shape's rate is below ``ratio`` times the rate over all shapes
    (once ``MIN_TRIALS`` blocks have been counted).
    """

    BUCKETS = 15
    HALVE_EVERY = 4096
    MIN_TRIALS = 1000

    def __init__(self, ratio: float = 0.5) -> None:
        self._ratio = ratio
        self._reused = [0.0] * self.BUCKETS * self.BUCKETS
        self._trials = [0.0] * self.BUCKETS * self.BUCKETS
        self._total_reused = self._total_trials = 0.0
        self._events = 0

    @classmethod
    def shape(cls, resident: int, new: int) -> int:
        """The shape of a request with ``resident`` leading blocks present and ``new`` after."""
        top = cls.BUCKETS - 1
        return min(resident.bit_length(), top) * cls.BUCKETS + min(new.bit_length(), top)

    def new_block(self, shape: int, ratio: float | None = None) -> bool:
        """Count a new block from a request of ``shape``; whether the shape is cold (by
        ``ratio`` when given, else the model's own)."""
        self._trials[shape] += 1
        self._total_trials += 1
        self._count()
        return self.cold(shape, ratio)

    def reused(self, shape: int) -> None:
        """A block counted by ``new_block`` was used again (once per block)."""
        self._reused[shape] += 1
        self._total_reused += 1
        self._count()

    def cold(self, shape: int, ratio: float | None = None) -> bool:
        if self._total_trials < self.MIN_TRIALS:
            return False
        rate = (self._reused[shape] + 0.5) / (self._trials[shape] + 1)
        return rate < (self._ratio if ratio is None else ratio) * self._total_reused / self._total_trials

    def _count(self) -> None:
        self._events += 1
        if self._events % self.HALVE_EVERY == 0:
            self._reused = [x / 2 for x in self._reused]
            self._trials = [x / 2 for x in self._trials]
            self._total_reused /= 2
            self._total_trials /= 2


class ConversationDepth:
    """How deep in its conversation a request is, and whether depth is worth keeping here.

    A request's parent is the earlier request that ended at its deepest earlier block
    (the last turn it sends again), and its depth is its parent's plus one (1 without a
    parent; a request that ends where an earlier one ended is not its own parent). Each
    request's last key and depth are remembered (``MEMORY`` per resident key of the
    caller, oldest dropped).

    Why: a chat turn's newest blocks come back exactly when its conversation does, so
    they are worth what the conversation is worth, not what their own use count says; and
    whether a conversation goes on can depend on how long it has gone on (in ``chat``,
    whose sessions follow the Mooncake conversation trace's, 26% of first turns get a
    second, 40% of second turns a third, 46% of third turns a fourth). How often requests at each depth (1 to
    8+) are extended is learned online; a depth is *warm* when its requests are extended
    more than ``ratio`` times as often as requests on average (once ``MIN_REQUESTS`` have
    been counted; counts halve every ``HALVE_EVERY``). ``floor(keys, resident)`` is then the
    request's depth, and the multi-queue counts every block of the request as used at
    least that many times, so a long conversation's blocks share its oldest turn's class.
    Where depth says nothing (``chat-memoryless``: every turn the last with the same
    chance) or shared prompts are extended far more often than any conversation (the
    Mooncake trace, whose one-block prompts are extended thousands of times), no depth is
    warm and nothing changes.

    A floor is computed once per request list and shared by every multi-queue that sees
    that list (``AdaptivePolicy`` gives one ``ConversationDepth`` to all of its orders):
    O(blocks after the parent's end) per request.
    """

    DEPTHS = 8
    MEMORY = 4  # request ends remembered per resident key
    HALVE_EVERY = 4096
    MIN_REQUESTS = 500

    def __init__(self, ratio: float = 1.1) -> None:
        self._ratio = ratio
        self._ends: OrderedDict[bytes, int] = OrderedDict()  # a request's last key -> its depth
        self._requests = [0.0] * (self.DEPTHS + 1)  # by depth (index 0 unused)
        self._extended = [0.0] * (self.DEPTHS + 1)  # requests that extended one of that depth
        self._seen = 0
        self._recent: list[tuple[list[bytes], int]] = []  # the last two requests and their floors

    def floor(self, keys: list[bytes], resident: int) -> int:
        """The fewest uses each block of this request counts as: its depth where that is
        warm, else 1. ``resident``: the caller's resident keys, which bound the memory."""
        for seen, floor in self._recent:
            if seen is keys:
                return floor
        floor = self._learn(keys, self.MEMORY * resident) if keys else 1
        self._recent = [(keys, floor), *self._recent[:1]]
        return floor

    def _learn(self, keys: list[bytes], limit: int) -> int:
        depth = 1
        for i in range(len(keys) - 2, -1, -1):
            parent = self._ends.get(keys[i])
            if parent is not None:
                depth = parent + 1
                self._extended[min(parent, self.DEPTHS)] += 1
                break
        bucket = min(depth, self.DEPTHS)
        self._requests[bucket] += 1
        self._seen += 1
        if self._seen % self.HALVE_EVERY == 0:
            self._requests = [x / 2 for x in self._requests]
            self._extended = [x / 2 for x in self._extended]
        if keys[-1] not in self._ends:
            remember(self._ends, keys[-1], depth, limit)
        total = sum(self._requests)
        if total <= self.MIN_REQUESTS:
            return 1
        rate = (self._extended[bucket] + 0.5) / (self._requests[bucket] + 1)
        return depth if rate > self._ratio * sum(self._extended) / total else 1


class MultiQueuePolicy(EvictionPolicy):
    """Recency within frequency classes, with a memory of evicted blocks.

    Why not plain LRU: in a prefix cache most blocks are used once (the unique tail of a
    prompt), while a block that has been reused is far more likely to be reused again (on
    the Mooncake conversation trace 26% of blocks come back after one use, 42% after two,
    over 60% after four). LRU gives both the same time in the cache. Here a block's class
    is ``floor(log2(uses))`` (1, 2-3, 4-7, 8+ uses) and each class is an LRU queue; a
    block's eviction priority is its last-touch time plus ``offset × class``, so reused
    blocks stay longer in proportion to how often they came back (Multi-Queue, Zhou et al.
    2001, built for second-level caches whose reuse distances are long, like this one).

    - Uses count store hits (``meta.hits``), not puts, and survive eviction: a bounded
      history (``history`` entries per resident block) remembers the uses of evicted
      blocks, so a conversation whose blocks were evicted between turns comes back in its class.
    - The offset adapts online (no per-trace tuning): when evicted once-used blocks come
      back (a history hit) more often than evicted reused ones, the cache is too hard on
      new blocks and the offset shrinks, toward plain LRU; otherwise it grows. At large
      capacities this converges to LRU's behaviour, at small ones it protects reuse.
    - Time is counted in inserts and the offset in multiples of the resident count, so
      nothing depends on the tier's size or the trace's clock.

    - With ``admission`` (``AdaptivePolicy`` uses it; ``mq`` alone does not), new blocks
      of cold request shapes wait in a cold queue, ranked as ``COLD_OFFSET``
      resident-counts older, until their first hit.
    - With ``depth`` (likewise), the blocks of a request count at least its
      ``ConversationDepth.floor`` uses: a long conversation's blocks share its class.

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
                 admission: ReuseByShape | None = None, depth: ConversationDepth | None = None,
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
        # the ratio ``admission`` calls shapes cold by (None: its own); ``AdaptivePolicy`` sets it
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
        shape = ReuseByShape.shape(resident, len(keys) - resident)
        self._new = dict.fromkeys(keys[resident:], shape)

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
                shape, earlier = _pending_reuse_of(earlier)
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
        remember(self._history, key, uses if shape == -1 else _pending_reuse(shape, uses),
                 self._history_factor * len(self._uses))
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


class HotPolicy(MultiQueuePolicy):
    """LRU that holds on to the blocks used eight times or more: shared prefixes.

    Why: a shared system prompt is the root of every session that starts from it, and a
    returning session hits nothing when its root is gone. When live sessions need more
    room than the tier has, LRU lets the less popular prompts go between their uses;
    keeping them (a quarter of the tier on the synthetic chat workloads at 2% of
    distinct blocks) is worth more than the session blocks they displace. The
    multi-queue order protects them too, but in proportion to their class, so it also
    protects the sessions' own blocks used two to seven times, which loses to LRU when
    sessions give no sign of coming back (``chat-memoryless``).

    Blocks with 8+ uses rank ``offset`` resident-counts fresher than their last touch,
    all others by recency alone. On its own it loses badly wherever old blocks with many
    uses are not worth keeping (21 points below LRU on agent loops at 5%, 6.7 on
    ``chat-memoryless`` at 10%): it is an order ``AdaptivePolicy`` races against the one
    it chose, and with it ``adaptive`` gains 1.6 points on ``chat-memoryless`` at 2%.
    O(log classes) per candidate, as the multi-queue.
    """

    OFFSET = 8.0

    def __init__(self, history: int = 1, offset: float = OFFSET,
                 admission: ReuseByShape | None = None) -> None:
        super().__init__(history, admission=admission)
        self._hot_offset = offset

    def candidates(self) -> Iterator[bytes]:
        return self.hot_order(self._hot_offset)


class AdaptivePolicy(EvictionPolicy):
    """Multi-queue with the protection it gives reused blocks chosen by simulation: the
    default.

    Why: how much extra time reused blocks deserve depends on the workload and the cache
    size, and ``MultiQueuePolicy``'s own adaptation (from which evicted blocks come back)
    gets it wrong in both directions: too little at 1% of the Mooncake trace, too much at
    20% (where it loses to LRU) and on the mixed workload, where long-lived protected
    blocks squeeze out the newest blocks of running agents. The right amount is whatever
    hits most, so this policy measures that directly.

    - One multi-queue structure over the resident keys, with a history 8 times as long
      as ``mq``'s (a block evicted between a conversation's turns keeps its use class),
      an exact LRU order and a ``BimodalPolicy`` order beside it. Eviction follows one of
      the orders: the multi-queue order with its offset capped at one of ``caps``
      resident-counts (0 is plain LRU), or (with ``bimodal``) the bimodal order, which
      keeps a stable set of chains when the running ones do not fit (agent loops at 2%).
      A cap of 1/4 was an order too until the selective order took its shadow's cost:
      it was followed seldom, and without it no workload moves more than 0.16 points.
    - The real history (``history``) was 16 until the selective order: a block that comes
      back after the shadows' 4 keys per resident key have forgotten it, but within 16,
      is new to the selective shadow (and refused) and known to the real multi-queue (and
      kept), so the real cache lagged its shadow by a point on the Mooncake trace at
      1-2%. With 8, Mooncake gains 0.77 and 0.49 points at 1% and 2% and system prompts
      0.49 at 2%; RAG loses 0.25 at 2% (0.35 with seed 1), the mix 0.02 (0.13); with 4,
      RAG and the mix lose more (0.68, 0.18).
    - One shadow cache per order: metadata-only, as large as the most keys ever resident
      here, evicting leaves first as the store does. A shadow's multi-queue remembers
      ``shadow_history`` (4) evicted keys per resident key: the shadows only rank the
      orders, and with 16 (when the real one kept 16) they held most of the policy's
      memory and chose no better (on the Mooncake trace at 2-10% they chose slightly worse). Each sees
      every request the store is asked about (``observe``, from ``TieredStore.lookup``: a
      request's keys from depth 0) and counts its prefix hits as the store does. Scores
      are the hit blocks of each shadow, decayed by ``decay`` per request on which the
      shadows differ (a window of about 50 such requests); the policy follows the best
      shadow once it leads the followed one by ``hysteresis``, so it does not flap on
      noise. A request is replayed when the next one is observed, once the store has put
      it, so that the shadows' size counts it.
    - The bimodal order is followed only while its shadow also leads over a longer
      window (``long_decay``, about 500 requests), and left as soon as it does not
      lead the short one: its stable set pays off slowly, and over 50 requests it leads
      by chance on traffic where it loses (without this gate: 0.37 points below LRU on
      chat-memoryless at 5%; with a 100-request window, 0.31 below on Mooncake at 20%).
    - The hot order (``HotPolicy``, with ``hot``) is raced apart: it is followed while its
      shadow hits more than the chosen order's over the short window and leads it by
      ``hot_lead`` (3%) of that order's hits over the long window. Scored with the others,
      its shadow would change which requests count toward their windows, and with them
      the choice among the others (0.3 points below LRU on ``chat-memoryless`` at 10%).
    - The selective order (with ``selective``, a ratio) is raced the same way, with a
      lead of ``selective_lead`` (10%): the multi-queue order at the largest cap with
      cold blocks ``SELECTIVE_COLD_OFFSET`` (4) resident-counts older rather than one,
      and while it is followed, the real multi-queue's admission calls a shape cold
      unless its blocks come back ``selective`` (2) times as often as the average block,
      rather than half as often. Where most blocks are used once and the tier is small,
      refusing more, and harder, pays: on the Mooncake trace at 1% and 2% of distinct
      blocks +4.55 and +7.02 points over LRU, against +1.95 and +3.06 without it. There
      its shadow leads by far; at 10% it leads only in stretches, and following it there
      cost 0.3 points with the hot order's 3% lead. On the synthetic workloads it never
      leads by 10%. Blocks keep the admission they were inserted under when the order
      changes. Its settings were chosen on the Mooncake trace, the one workload where it
      is followed: a multi-queue alone with them gains 3.8 and 6.8 points at 1% and 2%
      and loses 3.4 and 5.8 at 10% and 20%.
    - This is set dueling (Qureshi et al. 2007) with full shadows rather than sampled
      sets: a block is worth nothing once its prefix is gone, so per-key samples misjudge
      prefix hits.
    - The real multi-queue and each multi-queue shadow learn admission (``ReuseByShape``,
      each its own): new blocks from requests of a shape whose blocks seldom come back
      rank as older until their first hit. The LRU and bimodal orders do not.
    - With ``depth``, the real multi-queue and its shadows share one
      ``ConversationDepth``: where long conversations are likelier to go on than requests
      in general, a request's blocks count at least its depth in uses (on ``chat`` at 5%
      this is +1.04 points over LRU rather than +0.37). The hot shadow does not use it,
      but the hot order, read from the real multi-queue, sees its classes.

    Cost per operation: O(1) for the LRU and bimodal orders, O(log classes) per
    candidate for the multi-queue, hot and selective orders; per request, one replay in
    each shadow and one parent search for the conversation depth. Memory: the resident
    keys held by one shadow per order and the real structures, plus the histories (8 keys per
    resident key for the real multi-queue, 4 for each multi-queue, hot and selective shadow, 1 for
    each bimodal order) and 4 request ends per resident key. Requests the store is not
    asked about (a ``get`` or ``put`` with no ``lookup`` first) still update the
    structures but not the scores, and their blocks take the depth floor of the last
    request that was asked about.
    """

    CAPS = (0.0, 1 / 2, 2.0)
    BIMODAL = "bimodal"  # the name of the bimodal order in ``following`` and ``shadow_hits``
    HOT = "hot"  # likewise for the hot order
    SELECTIVE = "selective"  # likewise for the multi-queue order with selective admission
    SELECTIVE_RATIO = 2.0  # its admission: cold unless a shape is reused twice as often as the average
    SELECTIVE_COLD_OFFSET = 4.0  # and how much older than its insert time a cold block ranks
    REPLAY_COST = 7  # about, against one policy structure: its own three and six shadow caches
    HISTORY = 8
    SHADOW_HISTORY = 4

    def __init__(self, caps: tuple[float, ...] = CAPS, history: int = HISTORY,
                 shadow_history: int = SHADOW_HISTORY, decay: float = 0.98,
                 hysteresis: float = 1.02, *, bimodal: bool = True, long_decay: float = 0.998,
                 hot: bool = True, hot_lead: float = 0.03, depth: bool = True,
                 selective: float | None = SELECTIVE_RATIO, selective_lead: float = 0.1) -> None:
        if not caps:
            raise ValueError("AdaptivePolicy needs at least one offset cap")
        self._orders: tuple[float | str, ...] = (*caps, self.BIMODAL) if bimodal else caps
        self._selective, self._selective_cap = selective, max(caps)
        self._lru = LRUPolicy()
        conversations = ConversationDepth() if depth else None  # one, shared by every multi-queue order
        self._mq = MultiQueuePolicy(history=history, admission=ReuseByShape(), depth=conversations)
        self._bimodal = BimodalPolicy() if bimodal else None
        # every order over the resident keys: each insert, touch, remove and observe goes to all
        self._structures: tuple[EvictionPolicy, ...] = (
            (self._lru, self._mq) if self._bimodal is None else (self._lru, self._mq, self._bimodal))

        def shadow(order: float | str) -> EvictionPolicy:
            if order == self.BIMODAL:
                return BimodalPolicy()
            if order == 0:
                return LRUPolicy()
            return MultiQueuePolicy(shadow_history, order, admission=ReuseByShape(), depth=conversations)

        self._shadows = [_Shadow(shadow(order)) for order in self._orders]
        self._scores = [0.0] * len(self._orders)
        self._long_scores = [0.0] * len(self._orders)  # the same hits over about 500 requests
        self._decay, self._hysteresis, self._long_decay = decay, hysteresis, long_decay
        self._following = len(caps) - 1
        # raced apart from the others, so that their shadows leave the others' scores as they
        # are; the first that leads is followed
        self._challengers: list[tuple[str, _Challenger]] = []
        if hot:
            self._challengers.append((self.HOT, _Challenger(
                HotPolicy(shadow_history, admission=ReuseByShape()), decay, long_decay, hot_lead)))
        if selective is not None:
            self._challengers.append((self.SELECTIVE, _Challenger(MultiQueuePolicy(
                shadow_history, self._selective_cap, admission=ReuseByShape(selective), depth=conversations,
                cold_offset=self.SELECTIVE_COLD_OFFSET), decay, long_decay, selective_lead)))
        self._most_resident = 0
        self._pending: list[bytes] = []
        self.switches = 0

    @property
    def following(self) -> float | str:
        """The order evictions follow now: an offset cap (0.0: LRU), ``BIMODAL``, ``HOT`` or
        ``SELECTIVE``."""
        for name, challenger in self._challengers:
            if challenger.leads:
                return name
        return self._orders[self._following]

    @property
    def shadow_hits(self) -> dict[float | str, int]:
        hits = {order: s.hits for order, s in zip(self._orders, self._shadows, strict=True)}
        hits.update((name, challenger.shadow.hits) for name, challenger in self._challengers)
        return hits

    def insert(self, key: bytes, meta: Any) -> None:
        for structure in self._structures:
            structure.insert(key, meta)
        self._most_resident = max(self._most_resident, len(self._lru))

    def touch(self, key: bytes, meta: Any) -> None:
        for structure in self._structures:
            structure.touch(key, meta)

    def remove(self, key: bytes) -> None:
        for structure in self._structures:
            structure.remove(key)

    def observe(self, keys: list[bytes]) -> None:
        """Replay the previous request in the shadows, and keep this one for the next
        call: by then its put has happened, so the shadows' size counts it."""
        for structure in self._structures:
            structure.observe(keys)
        previous, self._pending = self._pending, keys
        if not previous or not self._most_resident:
            return
        hits = [s.request(previous, self._most_resident) for s in self._shadows]
        for _, challenger in self._challengers:
            challenger.race(previous, self._most_resident, hits[self._following])
        if min(hits) != max(hits):
            self._choose(hits)
        # the real multi-queue admits the blocks of this request's put as the followed order does
        self._mq.cold_ratio = self._selective if self.following == self.SELECTIVE else None

    def _choose(self, hits: list[int]) -> None:
        """Score the orders' shadows on a request where they differ, and switch to the best."""
        scores, long_scores = self._scores, self._long_scores
        for i, h in enumerate(hits):
            scores[i] = scores[i] * self._decay + h
            long_scores[i] = long_scores[i] * self._long_decay + h
        candidates = range(len(scores))
        if self._bimodal is not None:
            bimodal = len(scores) - 1
            if long_scores[bimodal] <= max(long_scores[:bimodal]):
                candidates = range(bimodal)  # it must lead over the longer window too
        best = max(candidates, key=scores.__getitem__)
        if best == self._following:
            return
        leaving_bimodal = self._orders[self._following] == self.BIMODAL
        if leaving_bimodal or scores[best] > scores[self._following] * self._hysteresis:
            self._following = best
            self.switches += 1

    def candidates(self) -> Iterator[bytes]:
        order = self.following
        if order == self.HOT:
            return self._mq.hot_order(HotPolicy.OFFSET)
        if order == self.BIMODAL:
            return self._bimodal.candidates()
        if order == self.SELECTIVE:
            return self._mq.order(self._selective_cap, self.SELECTIVE_COLD_OFFSET)
        return self._lru.candidates() if order == 0 else self._mq.order(order)

    def __len__(self) -> int:
        return len(self._lru)


class _Challenger:
    """An order raced against whichever order the others choose: it is followed while its
    shadow hits more over the short window (``decay`` per request on which the two differ)
    and leads by a share ``lead`` of the chosen order's hits over the long one
    (``long_decay`` per request)."""

    def __init__(self, policy: EvictionPolicy, decay: float, long_decay: float, lead: float) -> None:
        self.shadow = _Shadow(policy)
        self.leads = False
        self._decay, self._long_decay, self._lead = decay, long_decay, lead
        self._short = self._long = self._chosen = 0.0  # its lead, its long lead, the chosen order's hits

    def race(self, keys: list[bytes], capacity: int, chosen_hits: int) -> None:
        """Replay a request in its shadow, against the hits of the chosen order's shadow."""
        lead = self.shadow.request(keys, capacity) - chosen_hits
        if lead:
            self._short = self._short * self._decay + lead
        self._long = self._long * self._long_decay + lead
        self._chosen = self._chosen * self._long_decay + chosen_hits
        self.leads = self._short > 0 and self._long > self._lead * self._chosen


class _ShadowMeta:
    """What a policy reads of a block (``hits``), for keys only a shadow cache holds."""

    __slots__ = ("hits", "parent")

    def __init__(self, parent: bytes | None) -> None:
        self.hits = 0
        self.parent = parent


class _Shadow:
    """A metadata-only cache of keys evicting by ``policy`` as the store does: it answers
    how many leading blocks of a request a cache of a given capacity would have held."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self._policy = policy
        self._metas: dict[bytes, _ShadowMeta] = {}
        self._children: dict[bytes, int] = {}  # key -> cached keys whose parent it is
        self.hits = 0

    def request(self, keys: list[bytes], capacity: int) -> int:
        """Hit blocks of a request (its keys from depth 0, each the parent of the next).
        Then it is cached as
        the store caches it: the hit blocks are touched (the get), room is made for the
        missing ones, which go in shallow first, and every block is touched deepest first
        (the put: an ancestor ends up more recent than its descendants)."""
        metas, policy, touch = self._metas, self._policy, self._policy.touch
        policy.observe(keys)
        hit = resident_prefix(keys, metas)
        for key in reversed(keys[:hit]):  # the get's touches
            meta = metas[key]
            meta.hits += 1
            touch(key, meta)
        new = [i for i in range(hit, len(keys)) if keys[i] not in metas][:capacity]
        if len(metas) + len(new) > capacity:
            self._evict(len(metas) + len(new) - capacity)
        for i in new:
            key, parent = keys[i], keys[i - 1] if i else None
            meta = metas[key] = _ShadowMeta(parent)
            if parent is not None:
                self._children[parent] = self._children.get(parent, 0) + 1
            policy.insert(key, meta)
        for key in reversed(keys):  # the put's touches
            meta = metas.get(key)
            if meta is not None:
                touch(key, meta)
        self.hits += hit
        return hit

    def _evict(self, need: int) -> None:
        """``need`` victims, taken as ``TieredStore`` takes them (``leaves_first``)."""
        children, metas = self._children, self._metas
        victims = list(itertools.islice(
            leaves_first(self._policy.candidates(), lambda k: children.get(k, 0),
                         lambda k: metas[k].parent, LEAF_SCAN_LIMIT), need))
        for key in victims:
            self._policy.remove(key)
            parent = metas.pop(key).parent
            if parent is not None:
                left = children[parent] - 1
                if left:
                    children[parent] = left
                else:
                    del children[parent]


def leaves_first(candidates: Iterable[bytes], held_children: Callable[[bytes], int],
                 parent_of: Callable[[bytes], bytes | None], scan_limit: int) -> Iterator[bytes]:
    """``candidates`` (a policy's order) with leaves first, the victim order of the store
    and of the shadow caches.

    ``held_children(key)``: the children that evicting ``key`` would strand (0 for a
    leaf). A key whose children have all been yielded is a leaf from then on, and comes
    right after the last of them: a batch takes the tail of the chain the policy ranks
    first, deepest first, rather than the last block of many chains. At most
    ``scan_limit`` keys with children wait; after that, or when the candidates run out,
    the waiting ones follow in policy order, children or not.
    """
    waiting: dict[bytes, None] = {}  # keys with children, in policy order
    chosen: dict[bytes | None, int] = {}  # parent -> its children yielded so far
    for key in candidates:
        if held_children(key) > chosen.get(key, 0):
            waiting[key] = None
            if len(waiting) >= scan_limit:
                break
            continue
        victim = key
        while True:  # the victim, then each waiting ancestor it frees
            yield victim
            parent = parent_of(victim)
            chosen[parent] = chosen.get(parent, 0) + 1
            if parent not in waiting or held_children(parent) > chosen[parent]:
                break
            del waiting[parent]
            victim = parent
    yield from waiting


_SHAPES = ReuseByShape.BUCKETS ** 2


def _pending_reuse(shape: int, uses: int) -> int:
    """A history entry for an evicted block whose reuse is yet to be credited to the
    shape of its request: negative, and it keeps the block's uses (more than one where a
    ``ConversationDepth`` floor raised them)."""
    return -1 - shape - _SHAPES * (uses - 1)


def _pending_reuse_of(entry: int) -> tuple[int, int]:
    """``(shape, uses)`` of a ``_pending_reuse`` entry."""
    extra, shape = divmod(-1 - entry, _SHAPES)
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


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "slru": SLRUPolicy,
    "mq": MultiQueuePolicy,
    "bimodal": BimodalPolicy,
    "hot": HotPolicy,
    "adaptive": AdaptivePolicy,
}
DEFAULT_POLICY = "adaptive"


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by name; ``"default"`` is whatever the store uses by default."""
    key = DEFAULT_POLICY if name == "default" else name
    if key not in POLICIES:
        raise ValueError(f"eviction policy {name!r} is unknown; choose one of "
                         f"{['default', *POLICIES]}")
    return POLICIES[key]()
