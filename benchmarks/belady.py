"""Offline references from the future of a trace: Belady's bound (evict the block whose
next use is farthest in the future) and LRU with perfect admission.

Counted with the replay's prefix semantics (a request hits its longest run of leading
cached blocks, then all its blocks are inserted or touched), capacity in blocks. A block's
ancestors are used whenever it is, so their next use is never later: evicting the farthest
next use (deepest first on ties) never strands a block that will hit. Blocks never used
again go first, so they are in effect not admitted.

LRU with perfect admission is LRU that evicts the blocks never used again first: how much
of Belady's lead is admission alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

from benchmarks.traces import Request
from tiers.policy import resident_prefix

_NEVER = 1 << 62


def next_uses(requests: Sequence[Request]) -> list[list[int]]:
    """For each request and block, the index of the next request using that block."""
    out: list[list[int]] = [[] for _ in requests]
    upcoming: dict[int, int] = {}
    for n in range(len(requests) - 1, -1, -1):
        ids = requests[n].block_ids
        out[n] = [upcoming.get(i, _NEVER) for i in ids]
        for i in ids:
            upcoming[i] = n
    return out


def belady_hit_rate(requests: Sequence[Request], capacity_blocks: int,
                    nexts: list[list[int]] | None = None) -> float:
    """Hit rate of the offline optimum with ``capacity_blocks`` blocks.

    Evicts the farthest next use, deepest first on ties. Pass ``nexts`` (from
    ``next_uses``) to share it between capacities.
    """
    return _offline_hit_rate(requests, capacity_blocks, nexts, lambda n, depth, nu: (-nu, -depth))


def oracle_admission_hit_rate(requests: Sequence[Request], capacity_blocks: int,
                              nexts: list[list[int]] | None = None) -> float:
    """Hit rate of LRU told which blocks are never used again: those go first, then the
    least recently used, deepest first (the store's LRU order).

    Not a bound on online policies (a better order of the live blocks can beat it), but it
    splits the gap to Belady in two: what perfect admission is worth, and what is left to
    the choice of which reused blocks to keep.
    """
    return _offline_hit_rate(requests, capacity_blocks, nexts,
                             lambda n, depth, nu: (nu != _NEVER, n, -depth))


def _offline_hit_rate(requests: Sequence[Request], capacity_blocks: int, nexts: list[list[int]] | None,
                      rank: Callable[[int, int, int], tuple]) -> float:
    """Prefix hit rate of a cache evicting the lowest ``rank(request index, depth, next
    use)``, a block's rank set when a request uses it. A min-heap with lazy deletion:
    O(log n) per block."""
    nexts = next_uses(requests) if nexts is None else nexts
    resident: dict[int, tuple] = {}  # block id -> its rank, the heap entry that is live
    heap: list[tuple[tuple, int]] = []
    hits = total = 0
    for n, (r, uses) in enumerate(zip(requests, nexts, strict=True)):
        ids = r.block_ids
        hits += resident_prefix(ids, resident)
        total += len(ids)
        for depth, (i, nu) in enumerate(zip(ids, uses, strict=True)):
            resident[i] = key = rank(n, depth, nu)
            heapq.heappush(heap, (key, i))
        while len(resident) > capacity_blocks:
            key, i = heapq.heappop(heap)
            if resident.get(i) == key:
                del resident[i]
    return hits / total if total else 0.0
