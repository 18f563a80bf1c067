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


class DuelingPolicy(EvictionPolicy):
    """LRU or multi-queue, whichever is winning now: a duel between two shadow caches.

    Why: ``MultiQueuePolicy`` beats LRU where reuse is skewed (shared prompts, RAG
    documents) but loses where the cache is large enough that protecting reused blocks
    keeps dead conversations (the Mooncake trace at 20%), and neither wins on every
    workload. This policy keeps both orders over the resident keys (every insert, touch
    and remove goes to both, O(1) each) and evicts by the one that is winning now, so it
    does about as well as the better of the two on each workload.

    The winner is decided online, the way CPU caches pick an insertion policy (set
    dueling, DIP: Qureshi et al. 2007) and ARC weighs recency against frequency with
    ghost lists: two metadata-only shadow caches, one evicting by LRU and one by
    multi-queue, replay the same requests, and the real cache follows the one that has
    been hitting more.

    - Requests are read off the store's calls: a put ends by touching every block of the
      request, deepest first, down to depth 0 (touches whose ``meta.hits`` grew are the
      get's hits before it, and are skipped). At depth 0 the buffered request goes to both
      shadows, shallow first, and each counts its hits as the store does: the longest run
      of leading blocks it holds. Shadows evict leaves first, as the store does. A chain
      that breaks off above depth 0 (a block resident only in another tier) is dropped.
    - Each shadow is as large as the most keys ever resident here (a full tier holds its
      capacity, which a policy is not told). The shadows see every request, not a sample:
      sampled keys or per-key hits misjudge the duel, because a block is worth nothing
      once its prefix is gone (per-key shadows favoured multi-queue on the agent workload
      at 2%, where it loses to LRU on prefix hits).
    - A request on which one shadow hits more blocks steps a saturating counter in
      ``[-limit, limit]`` toward its policy. The cache follows multi-queue above
      ``+margin`` and LRU below ``-margin`` (hysteresis: it does not flap on noise); the
      saturation bounds how long an old winner is remembered once the workload changes.

    Cost: three policies' metadata per resident key, O(1) work per operation for each
    (a request's blocks are buffered once). ``switches`` counts changes of the followed
    policy, ``shadow_hits`` each shadow's hit blocks.
    """

    def __init__(self, limit: int = 64, margin: int = 16) -> None:
        self._lru = LRUPolicy()
        self._mq = MultiQueuePolicy()
        self._shadows = {"lru": _Shadow(LRUPolicy()), "mq": _Shadow(MultiQueuePolicy())}
        self._limit, self._margin = limit, margin
        self._score = 0  # > 0: the multi-queue shadow has been hitting more
        self._evict_by: EvictionPolicy = self._mq
        self._hits: dict[bytes, int] = {}  # resident key -> meta.hits at its last touch
        self._request: list[tuple[bytes, bytes | None]] = []  # (key, parent), deepest first
        self._most_resident = 0
        self.switches = 0

    @property
    def following(self) -> str:
        """The policy that orders evictions now: ``"lru"`` or ``"mq"``."""
        return "mq" if self._evict_by is self._mq else "lru"

    @property
    def shadow_hits(self) -> dict[str, int]:
        return {name: s.hits for name, s in self._shadows.items()}

    def insert(self, key: bytes, meta: Any) -> None:
        self._lru.insert(key, meta)
        self._mq.insert(key, meta)
        self._hits[key] = meta.hits
        self._most_resident = max(self._most_resident, len(self._lru))

    def touch(self, key: bytes, meta: Any) -> None:
        hits = self._hits.get(key)
        if hits is None:
            return
        self._lru.touch(key, meta)
        self._mq.touch(key, meta)
        if meta.hits != hits:  # a get's hit: the put's touches that follow carry the request
            self._hits[key] = meta.hits
            return
        if self._request and self._request[-1][1] != key:
            self._request.clear()  # not the parent of the last one: that chain ended above depth 0
        self._request.append((key, None if meta.depth == 0 else meta.parent))
        if meta.depth == 0:
            self._replay(reversed(self._request))
            self._request.clear()

    def _replay(self, request: Iterator[tuple[bytes, bytes | None]]) -> None:
        """One request, shallow first, through both shadows; the counter steps toward
        the one that hit more of its blocks."""
        keys = list(request)
        lru_hits = self._shadows["lru"].request(keys, self._most_resident)
        mq_hits = self._shadows["mq"].request(keys, self._most_resident)
        if lru_hits == mq_hits:
            return
        self._score = max(-self._limit, min(self._limit, self._score + (1 if mq_hits > lru_hits else -1)))
        winner = (self._mq if self._score > self._margin else
                  self._lru if self._score < -self._margin else self._evict_by)
        if winner is not self._evict_by:
            self._evict_by = winner
            self.switches += 1

    def remove(self, key: bytes) -> None:
        self._lru.remove(key)
        self._mq.remove(key)
        self._hits.pop(key, None)

    def candidates(self) -> Iterator[bytes]:
        return self._evict_by.candidates()

    def __len__(self) -> int:
        return len(self._lru)


class _ShadowMeta:
    """What a policy reads of a block (``hits``), for keys only a shadow cache holds."""

    __slots__ = ("hits", "parent")

    def __init__(self, parent: bytes | None) -> None:
        self.hits = 0
        self.parent = parent


class _Shadow:
    """A metadata-only cache of keys evicting by ``policy``, leaves first as the store
    does: it answers how many leading blocks of a request a cache of a given capacity
    would have held."""

    _LEAF_SCAN = 64

    def __init__(self, policy: EvictionPolicy) -> None:
        self._policy = policy
        self._metas: dict[bytes, _ShadowMeta] = {}
        self._children: dict[bytes, int] = {}  # key -> cached keys whose parent it is
        self.hits = 0

    def request(self, keys: list[tuple[bytes, bytes | None]], capacity: int) -> int:
        """Hit blocks of a request of (key, parent), shallow first. Then it is cached as
        the store caches it: the hit blocks are touched (the get), room is made for the
        missing ones, which go in shallow first, and every block is touched deepest first
        (the put: an ancestor ends up more recent than its descendants)."""
        hit = 0
        while hit < len(keys) and keys[hit][0] in self._metas:
            hit += 1
        for key, _ in reversed(keys[:hit]):  # the get's touches
            meta = self._metas[key]
            meta.hits += 1
            self._policy.touch(key, meta)
        new = [(k, p) for k, p in keys if k not in self._metas][:capacity]
        while self._metas and len(self._metas) + len(new) > capacity:
            self._evict()
        for key, parent in new:
            self._metas[key] = _ShadowMeta(parent)
            if parent is not None:
                self._children[parent] = self._children.get(parent, 0) + 1
            self._policy.insert(key, self._metas[key])
        for key, _ in reversed(keys):  # the put's touches
            meta = self._metas.get(key)
            if meta is not None:
                self._policy.touch(key, meta)
        self.hits += hit
        return hit

    def _evict(self) -> None:
        """Evict the policy's first leaf among its first candidates, else its first."""
        first = victim = None
        for key in itertools.islice(self._policy.candidates(), self._LEAF_SCAN):
            if key not in self._children:
                victim = key
                break
            first = key if first is None else first
        victim = first if victim is None else victim
        self._policy.remove(victim)
        parent = self._metas.pop(victim).parent
        if parent is not None:
            left = self._children[parent] - 1
            if left:
                self._children[parent] = left
            else:
                del self._children[parent]


def _by_priority(queue: OrderedDict[bytes, int], offset: float) -> Iterator[tuple[float, bytes]]:
    return ((clock + offset, key) for key, clock in queue.items())


POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "slru": SLRUPolicy,
    "mq": MultiQueuePolicy,
    "duel": DuelingPolicy,
}
DEFAULT_POLICY = "mq"


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by name; ``"default"`` is whatever the store uses by default."""
    key = DEFAULT_POLICY if name == "default" else name
    if key not in POLICIES:
        raise ValueError(f"eviction policy {name!r} is unknown; choose one of "
                         f"{['default', *POLICIES]}")
    return POLICIES[key]()
