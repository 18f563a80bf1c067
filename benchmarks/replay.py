"""Replay a trace through the real ``TieredStore`` with metadata-only tiers.

Per request, the cache service's own calls: ``lookup`` finds the longest run of leading
blocks that are all cached (those are the hits), ``get`` reads them (counting per-tier hits
and promoting), and ``put`` inserts every block that is missing and touches the rest. No
payload is allocated (``MetadataTier``), but sizes are counted, so tiers are sized in bytes
exactly as in a deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.traces import ROOT, Request, block_key
from tiers.base import Block
from tiers.metadata import MetadataTier
from tiers.store import TieredStore


@dataclass(frozen=True)
class TierSpec:
    name: str
    capacity_bytes: int


def request_blocks(requests: Sequence[Request], block_bytes: int) -> list[list[Block]]:
    """Each request's full blocks as store blocks (built once, shared by every replay)."""
    keys: dict[int, bytes] = {}
    out = []
    for r in requests:
        blocks, parent = [], ROOT
        for depth, i in enumerate(r.block_ids):
            key = keys.get(i)
            if key is None:
                key = keys[i] = block_key(i)
            blocks.append(Block(key, parent, depth, None, block_bytes))
            parent = key
        out.append(blocks)
    return out


def replay(
    blocks: Sequence[list[Block]],
    tiers: Sequence[TierSpec],
    policy: str,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Hit rate and the store's counters after replaying ``blocks`` (one list per request).

    ``progress(n)`` is called every 1,000 requests with the count since the last call.
    """
    longest = max((sum(b.size for b in r) for r in blocks), default=0)
    if longest > sum(t.capacity_bytes for t in tiers):
        raise ValueError(f"a request of {longest} B does not fit in the store's "
                         f"{sum(t.capacity_bytes for t in tiers)} B; give it more capacity")
    store = TieredStore([MetadataTier(t.name, t.capacity_bytes) for t in tiers], policy=policy,
                        learn_inline=True)  # deterministic: the policy learns before the get and put
    hits = requested = 0
    for n, request in enumerate(blocks, 1):
        keys = [b.key for b in request]
        hit = len(store.lookup(keys))
        if hit:
            store.get(keys[:hit])
        store.put(request)
        hits += hit
        requested += len(request)
        if progress is not None and n % 1000 == 0:
            progress(1000)
    if progress is not None:
        progress(len(blocks) % 1000)
    stats = store.stats()
    return {
        "hit_rate": hits / requested if requested else 0.0,
        "hit_blocks": hits,
        "requested_blocks": requested,
        "tiers": [{k: t[k] for k in ("name", "capacity_bytes", "hits", "evictions", "promotions",
                                      "demotions", "blocks")} for t in stats["tiers"]],
        "dropped": stats["dropped"],
        "stranded": stats["stranded"],
    }
