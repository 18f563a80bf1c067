"""Belady's offline bound: evict the block whose next use is farthest in the future.

Counted with the replay's prefix semantics (a request hits its longest run of leading
cached blocks, then all its blocks are inserted or touched), capacity in blocks. A block's
ancestors are used whenever it is, so their next use is never later: evicting the farthest
next use (deepest first on ties) never strands a block that will hit. Blocks never used
again go first, so they are in effect not admitted.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from benchmarks.traces import Request

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

    A max-heap on (next use, depth) with lazy deletion: O(log n) per block. Pass ``nexts``
    (from ``next_uses``) to share it between capacities.
    """
    nexts = next_uses(requests) if nexts is None else nexts
    resident: dict[int, int] = {}  # block id -> its next use, the heap entry that is live
    heap: list[tuple[int, int, int]] = []  # (-next use, -depth, id)
    hits = total = 0
    for r, uses in zip(requests, nexts, strict=True):
        ids = r.block_ids
        hit = 0
        for i in ids:
            if i not in resident:
                break
            hit += 1
        hits += hit
        total += len(ids)
        for depth, (i, nu) in enumerate(zip(ids, uses, strict=True)):
            resident[i] = nu
            heapq.heappush(heap, (-nu, -depth, i))
        while len(resident) > capacity_blocks:
            nu, _, i = heapq.heappop(heap)
            if resident.get(i) == -nu:
                del resident[i]
    return hits / total if total else 0.0
