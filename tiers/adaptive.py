"""``adaptive``: the multi-queue order, with how much it protects reused blocks chosen by
simulation, and the helpers only it needs.

It keeps one metadata-only shadow cache per candidate order and follows whichever would
have hit most lately. That costs an order of magnitude more memory and CPU than ``lru``
(docs/eviction.md has the figures). The shadows are replayed in ``learn``, off the
store's lock: ``observe`` only queues the request.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import Any

from tiers.policy import EvictionPolicy, LRUPolicy, MultiQueuePolicy, remember, resident_prefix
from tiers.victims import LEAF_SCAN_LIMIT, leaves_first


class BimodalPolicy(EvictionPolicy):
    """LRU that holds on to a stable set of chains when the chains in use do not fit.

    Why: when running chains need more room than the tier has, LRU evicts each one just
    before it comes back. Belady's optimum keeps some chains whole and lets the rest go;
    bimodal insertion (Qureshi et al. 2007), taken per request rather than per block, does
    that online:

    - A request that extends a resident chain cleanly (a resident prefix, and none of its
      missing blocks evicted here before) puts its new blocks at the fresh end, as LRU does.
    - Any other request puts its new blocks at the evictable end, except one request in
      ``every`` drawn at random (seeded; a fixed one in ``every`` would always pick the
      same request of a periodic workload), so the set still turns over.
    - A hit moves a block to the fresh end, and so does the put of a clean request.

    On its own it loses to LRU wherever the working set fits: it is one of the orders
    ``AdaptivePolicy`` chooses from. Needs ``observe``. O(1) per operation; remembers one
    evicted key per resident key.
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


class ReuseByShape:
    """The learned chance that a request's new blocks are used again, by the request's
    shape: how many of its leading blocks were resident, and how many it adds (each as a
    power-of-two bucket, so 15 by 15 shapes).

    Why: whether a new block comes back depends on what kind of request brought it (a
    first chat turn, a long follow-up, a one-off question under a shared prompt), and the
    shape tells kinds apart without knowing the workload. A block counts as reused when it
    is hit, or comes back after eviction while the history remembers it. Counts halve
    every ``HALVE_EVERY`` events, so the model follows a changing workload.

    ``cold(shape)``: the shape's rate is below ``ratio`` times the rate over all shapes
    (once ``MIN_TRIALS`` blocks have been counted).
    """
    BUCKETS = 15
    SHAPES = BUCKETS * BUCKETS
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

    Why: a chat turn's newest blocks come back exactly when its conversation does, and
    whether a conversation goes on can depend on how long it has gone on. How often
    requests at each depth (1 to 8+) are extended is learned online; a depth is *warm*
    when its requests are extended more than ``ratio`` times as often as requests on
    average (once ``MIN_REQUESTS`` have been counted; counts halve every
    ``HALVE_EVERY``). ``floor(keys, resident)`` is then the request's depth, and the
    multi-queue counts every block of the request as used at least that many times.
    Where depth says nothing, no depth is warm and nothing changes.

    O(blocks after the parent's end) per request; a list seen again (by identity) gets
    the floor it got.
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


class HotPolicy(MultiQueuePolicy):
    """LRU that holds on to the blocks used eight times or more: shared prefixes.

    Why: a shared system prompt is the root of every session that starts from it. When
    live sessions need more room than the tier has, LRU lets the less popular prompts go
    between their uses; the multi-queue order protects them too, but also protects
    sessions' blocks used two to seven times, which loses when sessions give no sign of
    coming back. Blocks with 8+ uses rank ``offset`` resident-counts fresher than their
    last touch, all others by recency alone. On its own it loses badly wherever old
    blocks with many uses are not worth keeping: ``AdaptivePolicy`` races it against the
    order it chose. O(log classes) per candidate, as the multi-queue.
    """
    OFFSET = 8.0

    def __init__(self, history: int = 1, offset: float = OFFSET,
                 admission: ReuseByShape | None = None) -> None:
        super().__init__(history, admission=admission)
        self._hot_offset = offset

    def candidates(self) -> Iterator[bytes]:
        return self.hot_order(self._hot_offset)


class _ReplayedFloor:
    """The depth floor the real multi-queue gave the request a shadow replays: the shadows
    replay requests later, so they read the floor rather than learn it again."""

    value = 1

    def floor(self, keys: list[bytes], resident: int) -> int:
        return self.value


class AdaptivePolicy(EvictionPolicy):
    """Multi-queue with the protection it gives reused blocks chosen by simulation.

    Why: how much extra time reused blocks deserve depends on the workload and the cache
    size, and ``MultiQueuePolicy``'s own adaptation gets it wrong in both directions. The
    right amount is whatever hits most, so this policy measures that directly (set
    dueling, Qureshi et al. 2007, with full shadows rather than sampled sets: a block is
    worth nothing once its prefix is gone, so per-key samples misjudge prefix hits).

    - Real structures over the resident keys: a multi-queue (with a ``history`` of evicted
      keys per resident key, learned admission by request shape and, with ``depth``, a
      ``ConversationDepth`` floor), an exact LRU order and (with ``bimodal``) a
      ``BimodalPolicy`` order. Eviction follows one order: the multi-queue order with its
      offset capped at one of ``caps`` resident-counts (0 is plain LRU), or the bimodal one.
    - One shadow cache per order: metadata-only, as large as the most keys ever resident
      here, evicting leaves first as the store does; multi-queue shadows remember
      ``shadow_history`` evicted keys per resident key. Each replays every request the
      store is asked about and counts its prefix hits. Scores decay by ``decay`` per
      request on which the shadows differ; the policy follows the best shadow once it
      leads the followed one by ``hysteresis``. The bimodal order must also lead over a
      longer window (``long_decay``), as its stable set pays off slowly.
    - Challengers, raced apart so that their shadows leave the others' scores alone: the
      hot order (``HotPolicy``, lead ``hot_lead``) and the selective order (the multi-queue
      at the largest cap whose admission calls a shape cold unless its blocks come back
      ``selective`` times as often as the average, lead ``selective_lead``). A challenger
      is followed while it hits more over the short window and leads by its share over
      the long one.

    Off the lock: ``observe`` (under the store's lock) updates the real structures,
    O(keys), and queues the previous request (by then its put has happened, so the
    shadows' size counts it) with its depth floor; ``learn`` replays the queue in the
    shadows and chooses. At most ``queue`` requests wait; more are dropped and counted
    (``stats``). Memory: the resident keys once per shadow and real structure, plus the
    histories and 4 request ends per resident key.
    """

    learns = True
    CAPS = (0.0, 1 / 2, 2.0)
    BIMODAL = "bimodal"  # the name of the bimodal order in ``following`` and ``shadow_hits``
    HOT = "hot"  # likewise for the hot order
    SELECTIVE = "selective"  # likewise for the multi-queue order with selective admission
    SELECTIVE_RATIO = 2.0  # its admission: cold unless a shape is reused twice as often as the average
    SELECTIVE_COLD_OFFSET = 4.0  # and how much older than its insert time a cold block ranks
    REPLAY_COST = 7  # about, against one policy structure: its own three and six shadow caches
    QUEUE = 1024  # requests waiting for ``learn``; more are dropped
    HISTORY = 8
    SHADOW_HISTORY = 4

    def __init__(self, caps: tuple[float, ...] = CAPS, history: int = HISTORY,
                 shadow_history: int = SHADOW_HISTORY, decay: float = 0.98,
                 hysteresis: float = 1.02, *, bimodal: bool = True, long_decay: float = 0.998,
                 hot: bool = True, hot_lead: float = 0.03, depth: bool = True,
                 selective: float | None = SELECTIVE_RATIO, selective_lead: float = 0.1,
                 queue: int = QUEUE) -> None:
        if not caps:
            raise ValueError("AdaptivePolicy needs at least one offset cap")
        self._orders: tuple[float | str, ...] = (*caps, self.BIMODAL) if bimodal else caps
        self._selective, self._selective_cap = selective, max(caps)
        self._lru = LRUPolicy()
        self._mq = MultiQueuePolicy(history=history, admission=ReuseByShape(),
                                    depth=ConversationDepth() if depth else None)
        # the shadows' multi-queues take the floor the real one gave the request they replay
        replayed = _ReplayedFloor() if depth else None
        self._bimodal = BimodalPolicy() if bimodal else None
        # every order over the resident keys: each insert, touch, remove and observe goes to all
        self._structures: tuple[EvictionPolicy, ...] = (
            (self._lru, self._mq) if self._bimodal is None else (self._lru, self._mq, self._bimodal))

        def shadow(order: float | str) -> EvictionPolicy:
            if order == self.BIMODAL:
                return BimodalPolicy()
            if order == 0:
                return LRUPolicy()
            return MultiQueuePolicy(shadow_history, order, admission=ReuseByShape(), depth=replayed)

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
                shadow_history, self._selective_cap, admission=ReuseByShape(selective), depth=replayed,
                cold_offset=self.SELECTIVE_COLD_OFFSET), decay, long_decay, selective_lead)))
        self._most_resident = 0
        self._replayed = replayed
        self._previous: tuple[list[bytes], int] = ([], 1)  # the last observed request, its floor
        # (request, its depth floor, the shadows' size) waiting for ``learn``
        self._queue: deque[tuple[list[bytes], int, int]] = deque()
        self._queue_limit = queue
        self._learning = threading.Lock()  # one ``learn`` at a time: the shadows are not thread-safe
        self.switches = 0
        self.replays = 0
        self.dropped = 0  # requests not replayed because the queue was full

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
        """The real structures see the request; the previous one is queued for the shadows.
        O(keys): it runs under the store's lock."""
        for structure in self._structures:
            structure.observe(keys)
        previous, self._previous = self._previous, (keys, self._mq.floor)
        if not previous[0] or not self._most_resident:
            return
        if len(self._queue) >= self._queue_limit:
            self.dropped += 1
            return
        self._queue.append((*previous, self._most_resident))

    def learn(self, limit: int | None = None) -> bool:
        """Replay queued requests (at most ``limit``) in the shadows and choose the order to
        follow; True while more wait."""
        with self._learning:
            for _ in itertools.repeat(None) if limit is None else range(limit):
                if not self._queue:
                    break
                self._replay(*self._queue.popleft())
            return bool(self._queue)

    def _replay(self, keys: list[bytes], floor: int, capacity: int) -> None:
        if self._replayed is not None:
            self._replayed.value = floor
        hits = [s.request(keys, capacity) for s in self._shadows]
        for _, challenger in self._challengers:
            challenger.race(keys, capacity, hits[self._following])
        if min(hits) != max(hits):
            self._choose(hits)
        # the real multi-queue admits the blocks of the next put as the followed order does
        self._mq.cold_ratio = self._selective if self.following == self.SELECTIVE else None
        self.replays += 1

    def stats(self) -> dict:
        return {"following": str(self.following), "switches": self.switches, "replays": self.replays,
                "replays_waiting": len(self._queue), "replays_dropped": self.dropped}

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


