"""The tiered block store: placement, promotion, demotion, pins and eviction over tiers.

Tiers are ordered fastest first, as the service's clients see them (DRAM, HBM, flash:
``cacheserver.tiers_from_config`` says why DRAM comes first). The store owns the index (key →
``BlockMeta``), every tier's eviction policy, and every counter; tiers only keep bytes.

- ``put`` places new blocks in the fastest tier with room (making room by eviction);
  with ``write_through`` they also go to the last tier in the same call.
- ``get`` reads from the fastest tier holding the block and promotes it to the top tier.
- Eviction from a tier demotes the block to the next tier down (write-back) unless a lower
  tier already has it; eviction from the last tier drops it.
- Prefix-aware: a block is useless without its ancestors. Chains are touched deepest
  first, so under recency an ancestor is always newer than its descendants and leaves
  go first; a block with children is dropped only when no leaf can make room.
- Pinned blocks are out of their tier's policy, so nothing evicts them.

Below the last tier there may be a ``RemoteTier`` (Redis Cluster / Valkey, shared by
every cache service). It is not one of ``tiers``: the store keeps no index of it. A lookup
or get that misses the local tiers asks it in one batched round, off the store's lock, and
places the blocks it answers in the local tiers (a promotion); new blocks of a put go to it
write-behind, queued after the lock is released.

All public methods take one lock, so the store is safe to share between threads. What a
policy learns from lookups beyond O(keys) (``EvictionPolicy.learn``) runs off that lock:
in a background thread, or inline after each lookup with ``learn_inline`` (deterministic,
for replays).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from hashing.keys import KEY_SIZE
from tiers.base import (
    Block,
    Location,
    StoreError,
    StoreFullError,
    Tier,
    TierFull,
    TierWriteError,
    UnknownBlockError,
)
from tiers.policy import EvictionPolicy
from tiers.registry import DEFAULT_POLICY, make_policy
from tiers.remote import RemoteTier
from tiers.victims import LEAF_SCAN_LIMIT, leaves_first

log = logging.getLogger(__name__)

_DEFERRED = object()  # a read's block to be promoted in place (``_promote_in_place``)

# Share of a tier's blocks evicted when its backing store is full before its byte count.
_MAP_FULL_SHARE = 1 / 16
# Most of the time the background learner may take (``_learn_loop``).
_LEARN_SHARE = 0.1


class NotDurableError(StoreError):
    """Durable mode (``write_through``): the last tier, which must be persistent, did not
    take some blocks of a put. Those blocks are not stored (a retry writes them again);
    the rest of the batch is."""


@dataclass(slots=True)
class BlockMeta:
    parent: bytes
    depth: int
    size: int
    tiers: int = 0  # bit t set: resident in tier t
    pinned: int = -1  # tier index the block is pinned in, or -1
    pin_expiry: float = 0.0  # monotonic time, 0 for no expiry
    hits: int = 0
    last_access: float = 0.0  # wall-clock seconds
    children: int = 0  # blocks in the index whose parent this is


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    promotions: int = 0  # blocks copied into this tier by a read
    demotions: int = 0  # blocks moved into this tier by an eviction above
    bytes_in: int = 0
    bytes_out: int = 0
    write_errors: int = 0
    delete_errors: int = 0  # blocks forgotten here whose bytes the tier failed to delete


@dataclass
class StoreCounters:
    puts: int = 0
    put_bytes: int = 0
    gets: int = 0
    hits: int = 0
    misses: int = 0
    dropped: int = 0  # evicted from the last tier holding them
    stranded: int = 0  # dropped while they still had children
    checksum_failures: int = 0
    rejected_full: int = 0  # blocks refused because pinned blocks left no room
    oversize: int = 0  # blocks not stored because their own batch outgrew the store
    not_durable: int = 0  # blocks refused in durable mode because the last tier did not take them
    remote_promotions: int = 0  # blocks the remote tier answered, placed in a local tier


@dataclass
class _TierState:
    tier: Tier
    policy: EvictionPolicy
    used: int = 0
    blocks: int = 0
    pinned: int = 0
    counters: TierCounters = field(default_factory=TierCounters)
    write_problem: str = ""  # why the last write failed; empty once a write succeeds again
    # Keys forgotten here whose bytes the tier failed to delete (a broken flash): deleted
    # again after its next good write. Never holds a key resident here (a write removes it).
    undeleted: set[bytes] = field(default_factory=set)


class TieredStore:
    def __init__(
        self,
        tiers: Sequence[Tier],
        policy: str = "default",
        write_through: bool = False,
        promote_on_read: bool = True,
        learn_inline: bool = False,
        *,
        remote: RemoteTier | None = None,
    ):
        if not tiers:
            raise ValueError("a store needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be distinct, got {names}")
        self._tiers = [_TierState(t, make_policy(policy)) for t in tiers]
        self.policy_name = DEFAULT_POLICY if policy == "default" else policy  # what stats report
        self.write_through = write_through
        self.promote_on_read = promote_on_read
        self.counters = StoreCounters()
        self.remote = remote
        self._index: dict[bytes, BlockMeta] = {}
        self._pin_expiries: list[tuple[float, bytes]] = []  # heap
        self._lock = threading.RLock()
        self._closed = False
        self._moving: set[bytes] = set()  # blocks on their way up: no cascade may evict them
        self._held: Counter[bytes] = Counter()  # located blocks being sent from their slab
        self._rebuild()
        self._learners = [s.policy for s in self._tiers if s.policy.learns]
        self._learn_inline = learn_inline
        self._observed = threading.Event()  # a lookup gave the learners something to learn
        self._stopping = threading.Event()  # the store is closing: the learner stops
        self._learner: threading.Thread | None = None
        if self._learners and not learn_inline:
            self._learner = threading.Thread(target=self._learn_loop, name="kvtier-policy-learn", daemon=True)
            self._learner.start()

    # -- queries ------------------------------------------------------------------------

    @property
    def shared_tiers(self) -> dict[str, Tier]:
        """The tiers whose memory same-host clients may map, by name."""
        return {s.tier.name: s.tier for s in self._tiers if s.tier.shared}

    @property
    def locating_tier(self) -> Tier | None:
        """The host slab that locates its blocks, for GET to send them from, if any."""
        return next((s.tier for s in self._tiers if s.tier.locates and not s.tier.on_gpu), None)

    @property
    def tier_names(self) -> list[str]:
        return [s.tier.name for s in self._tiers]

    def tier_index(self, name: str) -> int:
        for i, s in enumerate(self._tiers):
            if s.tier.name == name:
                return i
        raise ValueError(f"tier {name!r} is not configured; this store has {self.tier_names}")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: bytes) -> bool:
        return key in self._index

    def lookup(self, keys: Iterable[bytes]) -> list[str]:
        """The tier of each leading key that is present; stops at the first missing one.

        ``len(result)`` is the number of cached leading blocks. Counts nothing and touches
        nothing: a lookup is a question, the ``get`` that follows is the use. Each tier's
        policy is told the question (``observe``): a lookup is how the store learns where
        a request begins, which adaptive policies replay in their shadow caches (``learn``).
        """
        keys = list(keys)
        with self._lock:
            for s in self._tiers:
                s.policy.observe(keys)
            out = self._leading_tiers(keys, 0)
        if self.remote is not None and len(out) < len(keys):
            # The rest of the prefix from the remote tier (off the lock), placed locally.
            self._admit_remote(self.remote.fetch(keys[len(out):], chain=True))
            with self._lock:
                out += self._leading_tiers(keys, len(out))
        if self._learn_inline:
            self.learn()
        elif self._learner is not None:
            self._observed.set()
        return out

    def _leading_tiers(self, keys: list[bytes], start: int) -> list[str]:
        """Tier names of the present keys from ``start`` up to the first missing one."""
        out = []
        for key in keys[start:]:
            meta = self._index.get(key)
            if meta is None:
                break
            out.append(self._tiers[_top(meta.tiers)].tier.name)
        return out

    def learn(self) -> None:
        """Let the policies learn all that the lookups so far showed them, off the store's lock."""
        for policy in self._learners:
            policy.learn()

    def _learn_loop(self) -> None:
        """The background learner: one request per policy at a time, then a pause, so that
        it takes at most ``_LEARN_SHARE`` of the time (the GIL) from the data plane; what
        it cannot keep up with, the policies drop and count."""
        while True:
            self._observed.wait()
            self._observed.clear()
            more = True
            while more:
                if self._stopping.is_set():
                    return
                started = time.perf_counter()
                more = any([policy.learn(1) for policy in self._learners])
                self._stopping.wait((time.perf_counter() - started) * (1 / _LEARN_SHARE - 1))

    def sizes(self, keys: Iterable[bytes]) -> list[int]:
        """Payload size of each key, -1 where absent (to size a buffer for ``get_into``)."""
        with self._lock:
            return [m.size if (m := self._index.get(k)) is not None else -1 for k in keys]

    def info(self, key: bytes) -> dict:
        with self._lock:
            meta = self._index.get(key)
            if meta is None:
                raise UnknownBlockError(f"block {key.hex()} is not in the store")
            return self._describe(key, meta)

    def _describe(self, key: bytes, meta: BlockMeta) -> dict:
        return {
            "key": key.hex(),
            "parent": meta.parent.hex(),
            "depth": meta.depth,
            "size": meta.size,
            "tiers": [s.tier.name for i, s in enumerate(self._tiers) if meta.tiers >> i & 1],
            "pinned": self._tiers[meta.pinned].tier.name if meta.pinned >= 0 else None,
            "hits": meta.hits,
            "last_access": meta.last_access,
            "children": meta.children,
        }

    def list_blocks(
        self, tier: str | None = None, pinned: bool | None = None, offset: int = 0, limit: int = 100
    ) -> list[dict]:
        """A page of block descriptions, in insertion order, filtered by tier and pin."""
        with self._lock:
            bit = 1 << self.tier_index(tier) if tier else -1
            rows = (
                (k, m)
                for k, m in self._index.items()
                if m.tiers & bit and (pinned is None or (m.pinned >= 0) == pinned)
            )
            return [self._describe(k, m) for k, m in itertools.islice(rows, offset, offset + limit)]

    # -- reads --------------------------------------------------------------------------

    def get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Payload of each key (``None`` where absent), read from its fastest tier.

        Hits are promoted to the top tier; the chain is touched deepest first.
        """
        return [None if r is None else bytes(r) for r in self._fetch(keys, None)]

    def get_into(self, keys: Sequence[bytes], arena: memoryview | bytearray, locate: Collection[str] = (),
                 hold: bool = False) -> list[memoryview | Location | None]:
        """Like ``get``, but copies the payloads back to back into ``arena`` (the caller's
        reusable buffer: one copy, no allocation) and returns a view of each, ``None``
        where absent. Stops before the first hit that does not fit, so the result may be
        shorter than ``keys``; the views are valid until the caller reuses the arena.

        A block served from a tier named in ``locate`` (one that ``locates``: a host slab,
        a shared GPU slab) is not copied: its ``Location`` there comes back instead (its
        arena space stays unused), for the caller to send from, or a same-host client to
        copy out of shared memory; so does a block this read promotes into such a tier (a
        flash hit now in DRAM). The read evicts none of the blocks it locates; with ``hold``
        no eviction or demotion takes them out of the slab until ``release`` either (a
        delete still may: the page generations say so)."""
        return self._fetch(keys, memoryview(arena).cast("B"), locate, hold)

    def release(self, keys: Iterable[bytes]) -> None:
        """End the hold ``get_into(..., hold=True)`` put on these located blocks."""
        with self._lock:
            held = self._held
            for key in keys:
                if held[key] > 1:
                    held[key] -= 1
                else:
                    held.pop(key, None)  # no longer held

    def _fetch(self, keys: Sequence[bytes], arena: memoryview | None, locate: Collection[str] = (),
               hold: bool = False) -> list:
        if self.remote is not None:
            # Membership without the lock is safe (a dict lookup is atomic under the GIL);
            # a block that arrives or leaves meanwhile is settled under the lock below.
            missing = [k for k in keys if k not in self._index]
            if missing:
                self._admit_remote(self.remote.fetch(missing, chain=False))
        with self._lock:
            plan = self._plan_reads(keys, arena)
            out: list = [None] * len(plan)
            served = [-1] * len(plan)
            top = self._tiers[0].tier
            in_place = self.promote_on_read and arena is not None and top.name in locate and top.reserves
            self._read_planned(plan, out, served, locate, defer=in_place)
            # Held before any promotion, which may evict from the same slab: a read never
            # evicts a block it located. Kept held after the read only with ``hold``.
            held = [row[0] for row, r in zip(plan, out, strict=True) if isinstance(r, Location)]
            self._held.update(held)
            try:
                promoted = self._promote_in_place(plan, out, served)
                self._held.update(promoted)  # before other promotions, which may evict
                held += promoted
                self._account_reads(plan, out, served)
                promoted = self._locate_promoted(plan, out, served, locate)
                self._held.update(promoted)
                held += promoted
            except BaseException:
                self.release(held)
                raise
            if held and not hold:
                self.release(held)
        return out

    def _locate_promoted(self, plan: list[tuple], out: list, served: list[int],
                         locate: Collection[str]) -> list[bytes]:
        """Blocks a read just promoted into a tier named in ``locate`` answer where they now
        lie, as that tier's own hits do: a same-host client copies a flash hit out of shared
        memory instead of receiving it over the socket. Their keys."""
        top = self._tiers[0].tier
        if top.name not in locate:
            return []
        rows = [i for i, (_, meta, _) in enumerate(plan)
                if served[i] > 0 and meta.tiers & 1 and not isinstance(out[i], Location)]
        keys = [plan[i][0] for i in rows]
        located = top.locate_many(keys)
        for i, where in zip(rows, located, strict=True):
            if where is not None:
                out[i] = where
        return [key for key, where in zip(keys, located, strict=True) if where is not None]

    def _account_reads(self, plan: list[tuple], out: list, served: list[int]) -> None:
        """After ``_read_planned``: retry failed copies, count hits and misses, promote,
        touch the chains read."""
        now = time.time()
        promote: list[Block] = []
        touched: list[bytes] = []
        for i, (key, meta, dest) in enumerate(plan):
            if meta is not None and out[i] is None and meta.tiers:  # fastest copy failed
                out[i], served[i] = self._read(key, meta, dest)
            t = served[i]
            self.counters.gets += 1
            if t < 0:
                self.counters.misses += 1
                for s in self._tiers:
                    s.counters.misses += 1
                continue
            self.counters.hits += 1
            for s in self._tiers[:t]:
                s.counters.misses += 1
            c = self._tiers[t].counters
            c.hits += 1
            c.bytes_out += meta.size
            meta.hits += 1
            meta.last_access = now
            touched.append(key)
            if t > 0 and self.promote_on_read and meta.pinned != t and not isinstance(out[i], Location):
                promote.append(Block(key, meta.parent, meta.depth, out[i], meta.size))
        if promote:
            self._moving = {b.key for b in promote}
            try:
                self._tiers[0].counters.promotions += len(self._place(0, promote))
            finally:
                self._moving = set()
        self._touch_chain(touched)

    def _plan_reads(self, keys: Sequence[bytes], arena: memoryview | None) -> list[tuple]:
        """(key, meta or None, destination view or None) per key; with an arena, stops
        before the first present block that does not fit in what is left of it."""
        plan = []
        offset = 0
        for key in keys:
            meta = self._index.get(key)
            dest = None
            if meta is not None and arena is not None:
                if offset + meta.size > arena.nbytes:
                    break
                dest = arena[offset : offset + meta.size]
                offset += meta.size
            plan.append((key, meta, dest))
        return plan

    def _read_planned(self, plan: list[tuple], out: list, served: list[int],
                      locate: Collection[str] = (), defer: bool = False) -> None:
        """Read each planned block from its fastest tier, one batched call per tier (or
        say where it lies, for the tiers named in ``locate``). With ``defer``, a block below
        the top tier that a read promotes is not read here but marked ``_DEFERRED``, for
        ``_promote_in_place``."""
        by_tier: dict[int, list[int]] = {}
        for i, (_, meta, _) in enumerate(plan):
            if meta is not None:
                by_tier.setdefault(_top(meta.tiers), []).append(i)
        for t, planned in by_tier.items():
            tier = self._tiers[t].tier
            rows = planned
            if tier.name in locate:
                located = tier.locate_many([plan[i][0] for i in planned])
                for i, where in zip(planned, located, strict=True):
                    if where is not None:
                        out[i], served[i] = where, t
                rows = [i for i, where in zip(planned, located, strict=True) if where is None]
            if defer and t > 0:
                for i in rows:
                    if plan[i][1].pinned != t:
                        out[i], served[i] = _DEFERRED, t
                rows = [i for i in rows if out[i] is None]
            if rows:
                self._read_rows(t, rows, plan, out, served, dests=[plan[i][2] for i in rows])

    def _read_rows(self, t: int, rows: list[int], plan: list[tuple], out: list, served: list[int], *,
                   dests: list[memoryview | None]) -> None:
        """Read the rows' blocks from tier ``t`` into ``dests`` (``None``: as new bytes)."""
        tier = self._tiers[t].tier
        keys = [plan[i][0] for i in rows]
        corrupt_before = tier.corrupt_reads
        if dests[0] is None:
            payloads = [tier.get(k) for k in keys]
        else:
            sizes = tier.read_many_into(keys, dests)
            payloads = [None if n < 0 else d[:n] for d, n in zip(dests, sizes, strict=True)]
        self.counters.checksum_failures += tier.corrupt_reads - corrupt_before
        for i, payload in zip(rows, payloads, strict=True):
            if payload is not None:
                out[i], served[i] = payload, t
            else:  # the tier lost or refused its copy: lower tiers may have one
                key, meta, _ = plan[i]
                out[i], served[i] = None, -1
                self._lose_copy(t, key, meta)

    def _promote_in_place(self, plan: list[tuple], out: list, served: list[int]) -> list[bytes]:
        """The ``_DEFERRED`` blocks: placed in the top tier first, then read from their tier
        straight into their new pages (one copy, none into the arena) and answered by their
        location there. A block that finds no room is read into the arena as usual; one
        whose copy fails to read leaves the top tier again (``None``: ``_account_reads``
        tries the tiers below). Returns the keys located."""
        rows = [i for i, r in enumerate(out) if r is _DEFERRED]
        if not rows:
            return []
        top = self._tiers[0]
        self._moving = {plan[i][0] for i in rows}
        try:
            self._place(0, [Block(key, meta.parent, meta.depth, None, meta.size) for key, meta, _ in
                            (plan[i] for i in rows)])
        finally:
            self._moving = set()
        located = []
        for t in sorted({served[i] for i in rows}):
            group = [i for i in rows if served[i] == t]
            wheres = top.tier.locate_many([plan[i][0] for i in group])
            views = [top.tier.view(w) if w is not None else [] for w in wheres]
            # One run (nearly every block): straight into its page; several: via the arena.
            dests = [v[0] if len(v) == 1 else plan[i][2] for i, v in zip(group, views, strict=True)]
            self._read_rows(t, group, plan, out, served, dests=dests)
            for i, where, one_run in zip(group, wheres, (len(v) == 1 for v in views), strict=True):
                key, meta, _ = plan[i]
                if where is None:  # no room: it stays in the arena
                    continue
                if out[i] is None:  # unreadable: its pages go again, uncounted
                    self._delete_from(0, [key])
                    self._lose_copy(0, key, meta)
                    top.counters.bytes_in -= meta.size
                    continue
                if not one_run:
                    top.tier.fill(key, out[i])
                out[i] = where
                located.append(key)
        top.counters.promotions += len(set(located))
        return located

    def _read(self, key: bytes, meta: BlockMeta, dest: memoryview | None = None):
        """``(payload, tier index)`` from the fastest tier that can produce it, dropping
        copies that fail to read; with ``dest`` the payload is copied there and returned
        as a view of it. ``(None, -1)`` when no tier can produce it."""
        for t, s in enumerate(self._tiers):
            if not meta.tiers >> t & 1:
                continue
            before = s.tier.corrupt_reads
            if dest is None:
                payload = s.tier.get(key)
            else:
                n = s.tier.read_into(key, dest)
                payload = None if n < 0 else dest[:n]
            if payload is not None:
                return payload, t
            # The tier lost or refused the copy (a failed checksum): it is a miss here.
            self.counters.checksum_failures += s.tier.corrupt_reads - before
            if not self._lose_copy(t, key, meta):
                break
        return None, -1

    # -- writes -------------------------------------------------------------------------

    def put(self, blocks: Sequence[Block]) -> int:
        """Store new blocks (present ones are only touched); returns how many were new.

        Every block is validated before anything changes. A batch never evicts its own
        blocks: when it is larger than the store, its head is stored and the rest counted
        (``oversize``). Raises ``StoreFullError`` when pinned blocks leave no room for some
        block; the blocks that did fit stay stored.
        """
        for b in blocks:
            _check_block(b)
            self._tiers[0].tier.footprint(b.size)  # PayloadSizeError before any change
        now = time.time()
        kept: list[Block] = []
        try:
            with self._lock:
                return self._put_locked(blocks, now, kept)
        finally:
            if kept and self.remote is not None:
                self.remote.write_behind(kept)  # encodes (copies) the payloads: off the lock

    def _put_locked(self, blocks: Sequence[Block], now: float, kept: list[Block]) -> int:
        """``put`` under the lock; appends to ``kept`` the new blocks it stored."""
        self._expire_pins()
        new: list[Block] = []
        seen: set[bytes] = set()
        touched: list[bytes] = []
        batch: list[Block] = []
        for b in blocks:
            if b.key in seen:
                continue
            seen.add(b.key)
            touched.append(b.key)
            batch.append(b)
            meta = self._index.get(b.key)
            if meta is not None:
                meta.last_access = now
                continue
            self._index[b.key] = BlockMeta(b.parent, b.depth, b.size, last_access=now)
            new.append(b)
        homeless = self._place_new(new)
        refused = self._write_through(batch) if self.write_through else set()
        self._keep(new, refused)
        kept += [b for b in new if b.key in self._index and b.key not in refused]
        self._touch_chain(touched)
        if refused:
            self.counters.not_durable += len(refused)
            last = self._tiers[-1]
            why = last.write_problem if last.tier.persistent else "no persistent tier is open"
            raise NotDurableError(
                f"{len(refused)} of {len(blocks)} blocks were not stored: durable mode keeps only "
                f"blocks written to {last.tier.name}, and it did not take them ({why or 'no room'}); "
                "the service keeps serving what it holds, and a retry writes them again"
            )
        if homeless and any(s.pinned for s in self._tiers):
            self.counters.rejected_full += len(homeless)
            raise StoreFullError(
                f"{len(homeless)} of {len(blocks)} blocks were not stored: the tiers are full "
                "of pinned blocks and of this batch's own blocks; unpin some or add capacity"
            )
        # Otherwise the batch alone is larger than the store: its head is kept (a prefix
        # is what can be reused), the rest is counted, as a cache drops what cannot fit.
        self.counters.oversize += len(homeless)
        return len(new) - len(homeless)

    def _place_new(self, new: list[Block]) -> list[Block]:
        """Place blocks just added to the index, fastest tier first; those placed nowhere."""
        homeless = new
        for t in range(len(self._tiers)):
            if not homeless:
                break
            placed = set(self._place(t, homeless))
            homeless = [b for b in homeless if b.key not in placed]
        return homeless

    def _admit_remote(self, blocks: list[Block]) -> None:
        """Place blocks the remote tier answered in the local tiers (a promotion: not a put,
        not written back). A block that finds no room is simply not kept."""
        if not blocks:
            return
        with self._lock:
            now = time.time()
            new = []
            for b in blocks:
                if b.key not in self._index:
                    self._index[b.key] = BlockMeta(b.parent, b.depth, b.size, last_access=now)
                    new.append(b)
            homeless = {b.key for b in self._place_new(new)}
            for b in new:
                meta = self._index.get(b.key)
                if meta is None:  # dropped again by a cascade of this same placement
                    continue
                if b.key in homeless:
                    self._unplace(b.key, meta)
                    continue
                parent = self._index.get(b.parent)
                if parent is not None:
                    parent.children += 1
                self.counters.remote_promotions += 1
            self._touch_chain([b.key for b in new])

    def _write_through(self, batch: list[Block]) -> set[bytes]:
        """Durable mode: put this batch's blocks (new, or held but no longer in the last
        tier) in the last tier, which must be persistent; the keys that did not get there."""
        last = len(self._tiers) - 1
        if not self._tiers[last].tier.persistent:
            return {b.key for b in batch}
        missing = [b for b in batch if not self._index[b.key].tiers >> last & 1]
        placed = set(self._place(last, missing))
        return {b.key for b in missing if b.key not in placed}

    def _keep(self, new: list[Block], refused: set[bytes]) -> None:
        """Count the new blocks a put placed as children and puts; take back those it
        placed nowhere, or that durable mode refused."""
        for b in new:
            meta = self._index.get(b.key)
            if meta is None:  # dropped again by a cascade of this same put
                continue
            if meta.tiers and b.key not in refused:
                parent = self._index.get(b.parent)
                if parent is not None:
                    parent.children += 1
                self.counters.puts += 1
                self.counters.put_bytes += b.size
            else:
                self._unplace(b.key, meta)

    def _unplace(self, key: bytes, meta: BlockMeta) -> None:
        """Delete a block from every tier and the index, its parent's child count aside (a
        put that does not keep a block it added never counted it; ``_remove_everywhere``
        uncounts it)."""
        for t in range(len(self._tiers)):
            if meta.tiers >> t & 1:
                self._delete_from(t, [key])
                self._forget_in(t, key, meta)
        del self._index[key]

    def _place(self, t: int, blocks: list[Block]) -> list[bytes]:
        """Write ``blocks`` into tier ``t`` after making room; returns the keys placed.

        Places all of them if room can be made for all, else as many as fit one by one.
        """
        s = self._tiers[t]
        # A key twice in one call (a read that names a block twice) is placed once.
        blocks = [b for b in {b.key: b for b in blocks}.values() if not self._index[b.key].tiers >> t & 1]
        if not blocks:
            return []
        need = sum(s.tier.footprint(b.size) for b in blocks)
        if self._make_room(t, need, protect={b.key for b in blocks}):
            if self._write(t, blocks):
                return [b.key for b in blocks]
            return []
        # One by one, never evicting a block of this same batch to fit another.
        batch = {b.key for b in blocks}
        placed = []
        for b in blocks:
            if self._make_room(t, s.tier.footprint(b.size), protect=batch) and self._write(t, [b]):
                placed.append(b.key)
        return placed

    def _write(self, t: int, blocks: list[Block]) -> bool:
        s = self._tiers[t]
        # Making room can cascade (a demotion evicts below) and drop a block that is on its
        # way up from that lower tier: it is gone, so it is not placed either.
        blocks = [b for b in blocks if b.key in self._index]
        for attempt in range(3):
            try:
                s.tier.put_many(blocks)
            except TierFull as e:
                # The backing store is fuller than our byte count says (LMDB's B-tree pages,
                # pages older readers still hold): evict a share of what it holds and retry.
                problem = str(e)
                need = sum(s.tier.footprint(b.size) for b in blocks)
                amount = max(need, int(s.used * _MAP_FULL_SHARE)) * (attempt + 1)
                if self._evict_bytes(t, min(amount, s.used), protect={b.key for b in blocks}):
                    continue
            except TierWriteError as e:
                problem = str(e)
            else:
                if blocks:  # a write that reached the tier: it works again
                    s.write_problem = ""
                for b in blocks:
                    meta = self._index[b.key]
                    meta.tiers |= 1 << t
                    s.used += s.tier.footprint(b.size)
                    s.blocks += 1
                    s.counters.bytes_in += b.size
                    s.policy.insert(b.key, meta)
                if s.undeleted:
                    s.undeleted.difference_update(b.key for b in blocks)
                    if blocks and s.undeleted:  # it writes again: finish the deletes it missed
                        retry, s.undeleted = list(s.undeleted), set()
                        self._delete_from(t, retry)
                return True
            break
        s.counters.write_errors += len(blocks)
        s.write_problem = problem
        log.error("%s: %d blocks not written: %s", s.tier.name, len(blocks), problem)
        return False

    def _make_room(self, t: int, need: int, protect: set[bytes]) -> bool:
        """Evict from tier ``t`` until ``need`` more bytes fit. Evicts nothing and returns
        False when even evicting every unpinned block would not be enough."""
        s = self._tiers[t]
        excess = s.used + need - s.tier.capacity_bytes
        if excess <= 0:
            return True
        self._expire_pins()
        return self._evict_bytes(t, excess, protect)

    def _evict_bytes(self, t: int, amount: int, protect: set[bytes]) -> bool:
        """Evict at least ``amount`` bytes from tier ``t``, or nothing (returning False)."""
        s = self._tiers[t]
        victims, freed = [], 0
        for key in self._victims(t, protect):
            victims.append(key)
            freed += s.tier.footprint(self._index[key].size)
            if freed >= amount:
                break
        else:
            return False
        self._evict(t, victims)
        return True

    def _victims(self, t: int, protect: set[bytes]) -> Iterator[bytes]:
        """Tier ``t``'s evictable blocks in policy order, leaves first (``leaves_first``).
        Above the last tier every block is a leaf: an evicted block moves down, so its
        descendants stay reachable."""
        index, last, moving, held = self._index, len(self._tiers) - 1, self._moving, self._held
        candidates = (k for k in self._tiers[t].policy.candidates()
                      if k not in protect and k not in moving and k not in held)
        return leaves_first(candidates, lambda k: index[k].children if t == last else 0,
                            lambda k: index[k].parent, LEAF_SCAN_LIMIT)

    def _evict(self, t: int, victims: list[bytes]) -> None:
        s = self._tiers[t]
        lower = t + 1 if t + 1 < len(self._tiers) else None
        demote = []
        if lower is not None:
            for key in victims:
                meta = self._index[key]
                if not meta.tiers >> lower:  # no copy below: move it down
                    demote.append(Block(key, meta.parent, meta.depth, s.tier.get(key), meta.size))
        self._delete_from(t, victims)
        s.counters.evictions += len(victims)
        for key in victims:
            self._forget_in(t, key, self._index[key])
        if demote:
            self._tiers[lower].counters.demotions += len(self._place(lower, demote))
        for key in victims:
            meta = self._index.get(key)
            if meta is not None and not meta.tiers:
                self._drop(key, meta)

    def _delete_from(self, t: int, keys: list[bytes]) -> None:
        """Delete ``keys``' bytes from tier ``t``. A tier that cannot write (a broken flash)
        is not a reason to fail an eviction or a delete: the store forgets the blocks there
        all the same, counts and logs the failure, and deletes them again after the tier's
        next good write (a restart before that finds them again, as the valid blocks they
        are; a deleted block is never served meanwhile)."""
        s = self._tiers[t]
        try:
            s.tier.delete_many(keys)
        except TierWriteError as e:
            s.counters.delete_errors += len(keys)
            s.write_problem = str(e)
            s.undeleted.update(keys)
            log.error("%s: %d blocks not deleted: %s", s.tier.name, len(keys), e)

    def _forget_in(self, t: int, key: bytes, meta: BlockMeta) -> None:
        """Bookkeeping for a block that left tier ``t`` (its bytes are already gone)."""
        s = self._tiers[t]
        meta.tiers &= ~(1 << t)
        s.used -= s.tier.footprint(meta.size)
        s.blocks -= 1
        s.policy.remove(key)
        if meta.pinned == t:
            meta.pinned = -1
            s.pinned -= 1

    def _lose_copy(self, t: int, key: bytes, meta: BlockMeta) -> bool:
        """A block's copy in tier ``t`` is gone (read failure, clear): forget it there, and
        drop the block if no tier holds it any more. True while some tier still does."""
        self._forget_in(t, key, meta)
        if not meta.tiers:
            self._drop(key, meta)
        return bool(meta.tiers)

    def _drop(self, key: bytes, meta: BlockMeta) -> None:
        """Remove a block that no tier holds any more from the index."""
        del self._index[key]
        self.counters.dropped += 1
        if meta.children:
            self.counters.stranded += 1
        parent = self._index.get(meta.parent)
        if parent is not None:
            parent.children -= 1

    def _touch_chain(self, keys: list[bytes]) -> None:
        # Deepest first: an ancestor ends up more recent than its descendants.
        for key in reversed(keys):
            meta = self._index.get(key)
            if meta is None:
                continue
            for t, s in enumerate(self._tiers):
                if meta.tiers >> t & 1 and meta.pinned != t:
                    s.policy.touch(key, meta)

    # -- pins and deletes ---------------------------------------------------------------

    def pin(self, keys: Sequence[bytes], tier: str | None = None, ttl: float | None = None) -> int:
        """Keep blocks in ``tier`` (the top tier by default), copying them there first if
        needed; with ``ttl`` the pin lapses after that many seconds. Returns how many
        blocks are pinned. Raises ``UnknownBlockError`` for a key the store lacks (nothing
        is pinned then) and ``StoreFullError`` when the tier cannot make room."""
        t = self.tier_index(tier) if tier else 0
        s = self._tiers[t]
        with self._lock:
            self._expire_pins()
            missing = [k.hex() for k in keys if k not in self._index]
            if missing:
                raise UnknownBlockError(f"{len(missing)} block(s) not in the store: {missing[:4]}")
            for key in keys:
                meta = self._index[key]
                if not meta.tiers >> t & 1:
                    payload, _ = self._read(key, meta)
                    if payload is None:
                        raise UnknownBlockError(f"block {key.hex()} could not be read to pin it")
                    if not self._place(t, [Block(key, meta.parent, meta.depth, payload, meta.size)]):
                        raise StoreFullError(
                            f"{s.tier.name} has no room for block {key.hex()}: it is full of "
                            "pinned blocks"
                        )
                if meta.pinned >= 0 and meta.pinned != t:
                    self._unpin_one(key, meta)
                if meta.pinned != t:
                    meta.pinned = t
                    s.pinned += 1
                    s.policy.remove(key)
                meta.pin_expiry = time.monotonic() + ttl if ttl else 0.0
                if ttl:
                    heapq.heappush(self._pin_expiries, (meta.pin_expiry, key))
            return len(keys)

    def unpin(self, keys: Sequence[bytes]) -> int:
        """Make blocks evictable again; returns how many were pinned."""
        with self._lock:
            n = 0
            for key in keys:
                meta = self._index.get(key)
                if meta is not None and meta.pinned >= 0:
                    self._unpin_one(key, meta)
                    n += 1
            return n

    def _unpin_one(self, key: bytes, meta: BlockMeta) -> None:
        s = self._tiers[meta.pinned]
        s.pinned -= 1
        s.policy.insert(key, meta)
        meta.pinned = -1
        meta.pin_expiry = 0.0

    def _expire_pins(self) -> None:
        now = time.monotonic()
        while self._pin_expiries and self._pin_expiries[0][0] <= now:
            expiry, key = heapq.heappop(self._pin_expiries)
            meta = self._index.get(key)
            # A pin renewed or removed since has another (or no) expiry: skip the stale entry.
            if meta is not None and meta.pinned >= 0 and meta.pin_expiry == expiry:
                self._unpin_one(key, meta)

    def delete(self, keys: Iterable[bytes]) -> int:
        """Remove blocks from every tier, pinned or not; returns how many existed."""
        with self._lock:
            n = 0
            for key in keys:
                meta = self._index.get(key)
                if meta is None:
                    continue
                self._remove_everywhere(key, meta)
                n += 1
            return n

    def _remove_everywhere(self, key: bytes, meta: BlockMeta) -> None:
        self._unplace(key, meta)
        parent = self._index.get(meta.parent)
        if parent is not None:
            parent.children -= 1

    def clear(self, tier: str | None = None, include_pinned: bool = False) -> int:
        """Drop every block (or every block resident in ``tier``), pinned ones only when
        asked; returns how many blocks were removed from the store or the tier."""
        with self._lock:
            t = self.tier_index(tier) if tier else None
            n = 0
            for key, meta in list(self._index.items()):
                if not include_pinned and meta.pinned >= 0:
                    continue
                if t is None:
                    self._remove_everywhere(key, meta)
                    n += 1
                elif meta.tiers >> t & 1:
                    self._delete_from(t, [key])
                    self._lose_copy(t, key, meta)
                    n += 1
            return n

    # -- lifecycle ----------------------------------------------------------------------

    def _rebuild(self) -> None:
        """Index what persistent tiers kept across a restart. Deeper blocks enter their
        policy first, so leaves are the first to go."""
        for t, s in enumerate(self._tiers):
            if not s.tier.persistent:
                continue
            found = sorted(s.tier.scan(), key=lambda sb: -sb.depth)
            self.counters.checksum_failures += s.tier.corrupt_reads
            for sb in found:
                meta = self._index.get(sb.key)
                if meta is None:
                    meta = self._index[sb.key] = BlockMeta(sb.parent, sb.depth, sb.size)
                meta.tiers |= 1 << t
                s.used += s.tier.footprint(sb.size)
                s.blocks += 1
                s.policy.insert(sb.key, meta)
        for meta in self._index.values():
            parent = self._index.get(meta.parent)
            if parent is not None:
                parent.children += 1
        if self._index:
            log.info("store: %d blocks found in persistent tiers", len(self._index))

    def persist(self) -> int:
        """Copy blocks that only volatile tiers hold into the last persistent tier, and
        make it durable; returns how many were copied. Called on a clean shutdown."""
        with self._lock:
            targets = [t for t, s in enumerate(self._tiers) if s.tier.persistent]
            if not targets:
                return 0
            t = targets[-1]
            blocks = []
            for key, meta in self._index.items():
                if not meta.tiers >> t & 1:
                    payload, _ = self._read(key, meta)
                    if payload is not None:
                        blocks.append(Block(key, meta.parent, meta.depth, payload, meta.size))
            placed = self._place(t, blocks) if blocks else []
            self._tiers[t].tier.flush()
            return len(placed)

    def close(self, persist: bool = True) -> None:
        """Persist (by default) and release every tier; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if persist:
                self.persist()
            for s in self._tiers:
                s.tier.close()
        if self.remote is not None:
            self.remote.close()  # sends what is queued: network I/O, off the lock
        if self._learner is not None:
            self._stopping.set()
            self._observed.set()
            self._learner.join()

    # -- counters -----------------------------------------------------------------------

    def stats(self) -> dict:
        remote = self.remote.stats() if self.remote is not None else None
        with self._lock:
            c = self.counters
            tiers = []
            for s in self._tiers:
                tiers.append({
                    **s.tier.describe(),
                    "used_bytes": s.used,
                    "blocks": s.blocks,
                    "pinned_blocks": s.pinned,
                    "write_problem": s.write_problem,
                    **vars(s.counters),
                    "policy_stats": s.policy.stats(),
                })
            return {
                "blocks": len(self._index),
                "policy": self.policy_name,
                "write_through": self.write_through,
                "hit_rate": c.hits / c.gets if c.gets else 0.0,
                **vars(c),
                "tiers": tiers,
                "remote": remote,
            }


def _top(mask: int) -> int:
    """Index of the fastest tier in a residency mask."""
    return (mask & -mask).bit_length() - 1


def _check_block(b: Block) -> None:
    if not isinstance(b.key, bytes) or len(b.key) != KEY_SIZE:
        raise ValueError(f"block key must be {KEY_SIZE} bytes, got {b.key!r:.60}")
    if not isinstance(b.parent, bytes) or len(b.parent) != KEY_SIZE:
        raise ValueError(f"parent key must be {KEY_SIZE} bytes, got {b.parent!r:.60}")
    if b.depth < 0:
        raise ValueError(f"block depth must be >= 0, got {b.depth}")
    if b.payload is not None and len(b.payload) != b.size:
        raise ValueError(f"block size {b.size} disagrees with its payload of {len(b.payload)} B")
