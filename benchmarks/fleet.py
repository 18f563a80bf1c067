"""A simulated serving fleet in virtual time: replicas with local prefix caches behind a
router policy, and a cost model for prefill and decode. No model runs.

Each replica's local cache is the product's ``TieredStore`` over one metadata-only DRAM
tier with the store's default policy, sized in blocks (one byte per block). Per request,
in arrival order:

1. completions due by its arrival release their replica's load (in-flight count);
2. the policy places it (``benchmarks.placement``); it counts as in flight there;
3. the replica's cache serves it as the hit-rate replay does: the longest run of its
   leading full blocks all cached are hits (``lookup``/``get``), then all its full
   blocks are stored or touched (``put``). Blocks count as cached from arrival on, since
   the turns of a conversation are seconds to minutes apart, far longer than a prefill;
4. cost model: prefill runs one request at a time per replica, in arrival order (it is
   compute-bound), and takes ``uncached tokens / prefill_tps``; decode then runs beside
   other requests (continuous batching: decode is memory-bound, so a batch costs about
   what one sequence does) for ``output_tokens / decode_tps``. The request is in flight
   from arrival until its last token.

A shared remote tier (``FleetSpec.remote_blocks`` > 0) models hosts that each keep a small
local cache and share one remote store (Redis Cluster or Valkey, ``tiers.remote``): one
``TieredStore`` over a metadata-only tier of ``remote_blocks`` blocks that every replica's
local misses fall back to. A request's hits are its leading blocks cached locally, then
the run of the next ones cached remotely (prefix semantics: the lookup stops at the first
block missing from both); remote hits are promoted into the local cache (its ``put``).
Each remote hit costs ``block_bytes / remote_bps`` seconds of transfer in the replica's
prefill slot instead of its recompute (load and compute taken as serial, as
``benchmarks.sizing`` does: conservative). Writes are write-behind, off the data path: a
request's blocks become visible in the remote tier when its prefill is done plus the
transfer of the blocks it computed, not at arrival as in the local cache.

Load imbalance, sampled just after each placement (when the ring's bound is applied)::

    ratio(t) = max_i load_i(t) / mean_i load_i(t),   load = requests in flight

``max_over_mean_load`` is the average of ratio(t) over all arrivals: the imbalance a
request typically meets. Bounded loads keeps the chosen replica at or below
``ceil((1 + ε) · mean)``; the ceiling makes the ratio exceed 1 + ε whenever loads are a
few requests, so the figure is meaningful when replicas hold tens of requests, as
batching engines do. ``peak_over_mean_load`` is the 99th percentile of ratio(t),
``request_share_max_over_mean`` the busiest replica's share of all requests over the mean,
``over_bound`` the share of placements that left the chosen replica above the ring's bound
(zero for bounded loads, by construction), and ``keys_split`` the share of router keys
whose requests went to more than one replica (cache affinity lost).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.placement import POLICIES
from tiers.base import Block
from tiers.metadata import MetadataTier
from tiers.store import TieredStore


@dataclass(frozen=True)
class CostModel:
    """Seconds a replica spends on one request."""

    block_tokens: int
    prefill_tps: float  # prompt tokens/s of one replica
    decode_tps: float  # output tokens/s of one sequence (in a batch)
    block_bytes: int = 0  # bytes of one block's KV, moved on a remote hit or write
    remote_bps: float = 0.0  # the remote tier's read bandwidth, bytes/s (0: no remote tier)

    def __post_init__(self) -> None:
        if self.block_tokens < 1 or self.prefill_tps <= 0 or self.decode_tps <= 0:
            raise ValueError(f"block tokens and token rates must be positive, got {self}")
        if self.block_bytes < 0 or self.remote_bps < 0:
            raise ValueError(f"block bytes and remote bandwidth must not be negative, got {self}")

    def remote_s(self, blocks: int) -> float:
        """Transfer time of ``blocks`` from (or to) the remote tier."""
        if not blocks:
            return 0.0
        if self.remote_bps <= 0:
            raise ValueError("a remote tier needs its bandwidth (remote_bps) in the cost model")
        return blocks * self.block_bytes / self.remote_bps

    def prefill_s(self, blocks: int) -> float:
        return blocks * self.block_tokens / self.prefill_tps

    def decode_s(self, output_tokens: int) -> float:
        return output_tokens / self.decode_tps


@dataclass(frozen=True)
class FleetSpec:
    replicas: int
    cache_blocks: int  # each replica's local cache
    epsilon: float = 0.25  # the ring's bound: ceil((1 + ε) · mean)
    remote_blocks: int = 0  # the shared remote tier's capacity in blocks (0: isolated hosts)


@dataclass(frozen=True)
class Arrival:
    """One request as the fleet sees it: when, the router's key, the blocks, the answer."""

    at_s: float
    key: str
    blocks: list[Block]
    output_tokens: int


class Replica:
    """One engine replica: its local cache, its prefill queue and its counters."""

    def __init__(self, cache_blocks: int):
        self.store = TieredStore([MetadataTier("dram", cache_blocks)], policy="default")
        self.prefill_free_s = 0.0  # when the prefill queue empties
        self.busy_s = 0.0
        self.requests = self.hit_blocks = self.requested_blocks = self.remote_hit_blocks = 0
        self.remote_load_s = 0.0
        self.ttft_s: list[float] = []

    def serve(self, a: Arrival, cost: CostModel, remote: TieredStore | None = None) -> float:
        """Serve ``a`` (local misses fall back to ``remote``); returns its completion time."""
        keys = [b.key for b in a.blocks]
        hit = len(self.store.lookup(keys))
        if hit:
            self.store.get(keys[:hit])
        far = 0
        if remote is not None and hit < len(keys):
            far = len(remote.lookup(keys[hit:]))
            if far:
                remote.get(keys[hit:hit + far])
        self.store.put(a.blocks)  # stores the computed blocks, promotes the remote hits
        load = cost.remote_s(far)
        prefill = cost.prefill_s(len(keys) - hit - far) + load
        self.remote_hit_blocks += far
        self.remote_load_s += load
        hit += far
        start = max(a.at_s, self.prefill_free_s)
        self.prefill_free_s = start + prefill
        self.busy_s += prefill
        self.requests += 1
        self.hit_blocks += hit
        self.requested_blocks += len(keys)
        self.ttft_s.append(self.prefill_free_s - a.at_s)
        return self.prefill_free_s + cost.decode_s(a.output_tokens)


def simulate(arrivals: Sequence[Arrival], policy: str, fleet: FleetSpec, cost: CostModel) -> dict:
    """Replay ``arrivals`` (in time order) through a fleet routed by ``policy``."""
    longest = max((len(a.blocks) for a in arrivals), default=0)
    if longest > fleet.cache_blocks:
        raise ValueError(f"a request of {longest} blocks does not fit a replica's cache of "
                         f"{fleet.cache_blocks}; give the replicas more cache")
    router = POLICIES[policy](fleet.replicas, fleet.epsilon)
    replicas = [Replica(fleet.cache_blocks) for _ in range(fleet.replicas)]
    loads = [0] * fleet.replicas
    done: list[tuple[float, int, int]] = []  # heap of (completion time, sequence, replica)
    remote = (TieredStore([MetadataTier("remote", fleet.remote_blocks)], policy="default")
              if fleet.remote_blocks else None)
    writes: list[tuple[float, int, list[Block]]] = []  # heap of (visible in remote at, sequence, blocks)
    homes: dict[str, set[int]] = {}  # router key -> replicas its requests went to
    ratios, over_bound, end_s = [], 0, 0.0
    for seq, a in enumerate(arrivals):
        while done and done[0][0] <= a.at_s:
            _, _, node = heapq.heappop(done)
            loads[node] -= 1
            router.release(node)
        while writes and writes[0][0] <= a.at_s:
            remote.put(heapq.heappop(writes)[2])
        node = router.place(a.key, loads)
        loads[node] += 1
        total = sum(loads)
        ratios.append(max(loads) * fleet.replicas / total)
        over_bound += loads[node] > math.ceil((1 + fleet.epsilon) * total / fleet.replicas)  # the ring's cap
        homes.setdefault(a.key, set()).add(node)
        r = replicas[node]
        hits_before = r.hit_blocks
        finish = r.serve(a, cost, remote)
        if remote is not None:  # write-behind: the computed blocks, once prefill made them
            computed = len(a.blocks) - (r.hit_blocks - hits_before)
            heapq.heappush(writes, (r.prefill_free_s + cost.remote_s(computed), seq, a.blocks))
        end_s = max(end_s, finish)
        heapq.heappush(done, (finish, seq, node))
    start_s = arrivals[0].at_s if arrivals else 0.0
    out = _summary(replicas, ratios, max(end_s - start_s, 1e-9))
    out["over_bound"] = over_bound / len(arrivals) if arrivals else 0.0
    out["keys_split"] = sum(len(h) > 1 for h in homes.values()) / len(homes) if homes else 0.0
    return out


def _summary(replicas: list[Replica], ratios: list[float], span_s: float) -> dict:
    hits = sum(r.hit_blocks for r in replicas)
    remote_hits = sum(r.remote_hit_blocks for r in replicas)
    requested = sum(r.requested_blocks for r in replicas)
    served = [r.requests for r in replicas]
    ttft = sorted(t for r in replicas for t in r.ttft_s)
    return {
        "hit_rate": hits / requested if requested else 0.0,
        "max_over_mean_load": sum(ratios) / len(ratios) if ratios else 0.0,
        "peak_over_mean_load": _percentile(ratios, 0.99),
        "request_share_max_over_mean": max(served) * len(served) / sum(served) if sum(served) else 0.0,
        "utilisation": sum(r.busy_s for r in replicas) / (len(replicas) * span_s),
        "mean_ttft_s": sum(ttft) / len(ttft) if ttft else 0.0,
        "p90_ttft_s": _percentile(ttft, 0.9),
        "remote_hit_share": remote_hits / hits if hits else 0.0,  # of all hits, from the remote tier
        "remote_load_s": sum(r.remote_load_s for r in replicas),
        "hit_blocks": hits,
        "remote_hit_blocks": remote_hits,
        "requested_blocks": requested,
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
