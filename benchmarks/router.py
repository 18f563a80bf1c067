"""Router policies on a simulated fleet: prefix-cache hit rate against load balance.

``kvtier bench router`` replays the Mooncake conversation trace and a synthetic
multi-tenant chat workload through fleets of 8 and 64 replicas (``benchmarks.fleet``: each
replica's local cache is the product's ``TieredStore``, prefill and decode come from a
cost model) under round robin, least-loaded, plain consistent hashing and consistent
hashing with bounded loads (the product's ``HashRing``). It prints a table, checks the
targets, and writes JSON and a plot.

The router's key is the conversation's stable prefix, as ``engine.router.routing`` takes it:
the id of the first block after the shared system prompt. In the Mooncake trace block 0
is one system prompt shared by every request, so the literal first block id would send
the whole trace to one replica under plain hashing (``--key first-block`` shows it); the
key is block 1 (full or partial), which names system prompt + first user turn. In
``tenant-chat`` it is block ``TENANT_PROMPT_BLOCKS``.

Each fleet gets the trace at the speed that would load its prefill to ``--load`` of its
capacity if nothing hit (64 replicas get it 8 times faster than 8), so per-replica load
is the same at both sizes; the measured utilisation (less, by the hits) is reported.

Every cell runs twice in the same run: isolated hosts (each replica only its local cache)
and hosts sharing one remote tier (``--remote-cache``: its capacity as a fraction of the
workload's distinct blocks; the default 1.0 holds them all, an unlimited remote store for
this trace). A remote hit costs its transfer, ``block bytes / --remote-gbps``, instead of
its recompute. The default bandwidth is what ``kvtier bench remote`` measured through
``RemoteTier.fetch`` at 2 MiB values on a 3-primary Redis Cluster on loopback, 2 CPU cores
(``benchmarks/results/remote/bench-remote.json``, "kvtier_get_gbps"), and a block's
bytes are a 70B-class model's KV (Llama-2-70B, the architecture of the Mooncake paper's
experiments: 80 layers x K,V x 8 KV heads x 128 x 2 B = 320 KiB per token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FLEETS = (8, 64)
DEFAULT_WORKLOADS = ("mooncake", "tenant-chat")
# A large-model GPU replica (the trace's kind), not the bundled CPU engine: what sets the
# router's behaviour is how many requests a replica holds in flight, and a batching GPU
# engine holds tens.
DEFAULT_PREFILL_TPS = 20_000.0
DEFAULT_DECODE_TPS = 30.0
CHAT_BLOCK_TOKENS = 256  # tenant-chat's blocks: a turn is 1-4 of them
HIT_SHARE_OF_HASHING = 0.9  # targets: bounded loads keeps this share of plain hashing's hits,
LOAD_BOUND = 1.25  # with max/mean load at most this,
ROUND_ROBIN_FACTOR = 2.0  # and this multiple of round robin's hits at 8 replicas
# The remote tier's read bandwidth: RemoteTier.fetch at 2 MiB values, Redis Cluster on
# loopback, 2 cores (`kvtier bench remote`: benchmarks/results/remote/bench-remote.json,
# "kvtier_get_gbps" at 2 MiB; 0.99 before a cut value's two parts stopped being joined).
DEFAULT_REMOTE_GBPS = 1.88
KV_BYTES_PER_TOKEN = 80 * 2 * 8 * 128 * 2  # Llama-2-70B in 16 bits: layers, K+V, KV heads, head dim
SHARED_TARGETS = {"round-robin": 0.90, "bounded-load": 0.97}  # shared tier: share of the unlimited rate


@dataclass(frozen=True)
class Workload:
    name: str
    requests: list  # benchmarks.traces.Request, in time order
    keys: list[str]  # the router's key of each request
    block_tokens: int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workload", nargs="+", default=list(DEFAULT_WORKLOADS), choices=DEFAULT_WORKLOADS)
    p.add_argument("--trace", type=Path, default=None, help="Mooncake-style JSONL (default: "
                   "../shared/data/traces/mooncake_conversation.jsonl)")
    p.add_argument("--replicas", type=int, nargs="+", default=list(DEFAULT_FLEETS), help="fleet sizes")
    p.add_argument("--cache", type=float, default=0.03, help="each replica's cache as a fraction "
                   "of the workload's distinct blocks")
    p.add_argument("--prefill-tps", type=float, default=DEFAULT_PREFILL_TPS,
                   help="prompt tokens/s of one replica")
    p.add_argument("--decode-tps", type=float, default=DEFAULT_DECODE_TPS,
                   help="output tokens/s of one sequence in a batch")
    p.add_argument("--load", type=float, default=0.8, help="prefill utilisation the replay speed "
                   "is set for, counting no hits")
    p.add_argument("--epsilon", type=float, default=0.25, help="bounded loads' ε")
    p.add_argument("--key", choices=("conversation", "first-block"), default="conversation",
                   help="router key: the conversation's stable prefix, or the literal first block")
    p.add_argument("--requests", type=int, default=12_000, help="size of the synthetic workload")
    p.add_argument("--tenants", type=int, default=100, help="tenants of the synthetic workload")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic workload")
    p.add_argument("--remote-cache", type=float, default=1.0, help="the shared remote tier's capacity "
                   "as a fraction of the workload's distinct blocks (1.0: all of them, unlimited)")
    p.add_argument("--remote-gbps", type=float, default=DEFAULT_REMOTE_GBPS, help="the remote tier's read "
                   "bandwidth, GB/s (default: measured by kvtier bench remote at 2 MiB values)")
    p.add_argument("--kv-bytes-per-token", type=int, default=KV_BYTES_PER_TOKEN,
                   help="KV bytes of one token (a block moves block_tokens of them)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="simulation processes")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="hit rate and load balance per policy (PNG)")


def run(args: argparse.Namespace) -> int:
    from benchmarks.fleet import CostModel

    started = time.perf_counter()
    if args.load <= 0 or args.cache <= 0 or args.remote_cache <= 0 or args.remote_gbps <= 0:
        raise ValueError("--load, --cache, --remote-cache and --remote-gbps must be positive")
    workloads = [load_workload(name, args) for name in args.workload]
    costs = {w.name: CostModel(w.block_tokens, args.prefill_tps, args.decode_tps,
                               block_bytes=args.kv_bytes_per_token * w.block_tokens,
                               remote_bps=args.remote_gbps * 1e9) for w in workloads}
    results = measure(workloads, costs, args)
    described = [describe(w) for w in workloads]
    for d in described:  # the bandwidth at which a remote hit costs what its recompute does
        d["block_bytes"] = costs[d["name"]].block_bytes
        d["remote_break_even_gbps"] = args.kv_bytes_per_token * args.prefill_tps / 1e9
    report = {
        "config": {k: v for k, v in vars(args).items() if k not in ("func", "json", "plot", "trace")},
        "workloads": described,
        "results": results,
        "targets": check_targets(results) + check_shared_targets(results, described),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


def load_workload(name: str, args: argparse.Namespace) -> Workload:
    """A workload's requests and router keys (``--key first-block``: block 0's id)."""
    if name == "mooncake":
        from benchmarks import traces

        path = args.trace or traces.DEFAULT_TRACE
        requests = traces.load_jsonl(path)
        depth = 0 if args.key == "first-block" else 1
        return Workload(name, requests, mooncake_keys(path, depth), traces.MOONCAKE_BLOCK_TOKENS)
    import random

    from benchmarks.synthetic import TENANT_PROMPT_BLOCKS, PrefixIds, tenant_chat

    requests = tenant_chat(random.Random(args.seed), args.requests, PrefixIds(), tenants=args.tenants)
    depth = 0 if args.key == "first-block" else TENANT_PROMPT_BLOCKS
    return Workload(name, requests, [str(r.block_ids[depth]) for r in requests], CHAT_BLOCK_TOKENS)


def mooncake_keys(path: str | Path, depth: int) -> list[str]:
    """The id of block ``depth`` of each row, partial blocks included (the last when
    shorter): a one-block prompt's first user turn is in its partial block."""
    with Path(path).open() as f:
        rows = [json.loads(line)["hash_ids"] for line in f if line.strip()]
    return [str(ids[min(depth, len(ids) - 1)]) if ids else "" for ids in rows]


def describe(w: Workload) -> dict:
    from benchmarks.traces import distinct_blocks, unlimited_hit_rate

    return {"name": w.name, "requests": len(w.requests), "distinct_blocks": distinct_blocks(w.requests),
            "distinct_keys": len(set(w.keys)), "block_tokens": w.block_tokens,
            "unlimited_hit_rate": unlimited_hit_rate(w.requests)}


def time_scale(w: Workload, replicas: int, cost, load: float) -> float:
    """Trace seconds per simulated second that load the fleet's prefill to ``load`` with no hits."""
    span_s = (w.requests[-1].timestamp_ms - w.requests[0].timestamp_ms) / 1000
    prefill_s = sum(cost.prefill_s(len(r.block_ids)) for r in w.requests)
    return load * replicas * span_s / prefill_s


_WORKLOADS: dict = {}  # name -> (Workload, its store blocks), set before the workers fork


def measure(workloads: list[Workload], costs: dict, args: argparse.Namespace) -> list[dict]:
    """One simulation per (workload, fleet size, policy), in worker processes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks.placement import POLICIES
    from benchmarks.replay import request_blocks

    _WORKLOADS.clear()
    _WORKLOADS.update({w.name: (w, request_blocks(w.requests, 1)) for w in workloads})
    jobs = [(w.name, n, p, shared) for w in workloads for n in args.replicas for shared in (False, True)
            for p in POLICIES]
    ctx = multiprocessing.get_context("fork")  # workers inherit _WORKLOADS without pickling it
    with ProcessPoolExecutor(max(1, min(args.workers, len(jobs))), mp_context=ctx) as pool:
        futures = [pool.submit(_job, name, n, policy, cost=costs[name], cache=args.cache, load=args.load,
                               epsilon=args.epsilon, remote_cache=args.remote_cache if shared else 0.0)
                   for name, n, policy, shared in jobs]
        results = [f.result() for f in futures]
    print("", file=sys.stderr)
    return results


def _job(name: str, replicas: int, policy: str, *, cost, cache: float, load: float, epsilon: float,
         remote_cache: float = 0.0) -> dict:
    from benchmarks.fleet import Arrival, FleetSpec, simulate
    from benchmarks.traces import distinct_blocks

    w, blocks = _WORKLOADS[name]
    scale = time_scale(w, replicas, cost, load)
    arrivals = [Arrival(r.timestamp_ms / 1000 / scale, k, b, r.output_tokens)
                for r, k, b in zip(w.requests, w.keys, blocks, strict=True)]
    distinct = distinct_blocks(w.requests)
    remote = max(1, round(remote_cache * distinct)) if remote_cache > 0 else 0
    fleet = FleetSpec(replicas, max(1, round(cache * distinct)), epsilon, remote)
    t0 = time.perf_counter()
    out = simulate(arrivals, policy, fleet, cost)
    print(".", end="", file=sys.stderr, flush=True)
    return {"workload": name, "replicas": replicas, "policy": policy, "shared_remote": bool(remote),
            **out, "time_scale": scale, "cache_blocks": fleet.cache_blocks, "remote_blocks": remote,
            "seconds": round(time.perf_counter() - t0, 2)}


def check_targets(results: list[dict]) -> list[dict]:
    """Bounded loads against plain hashing and round robin, per workload and fleet size."""
    cell = {(r["workload"], r["replicas"], r["policy"]): r for r in results if not r.get("shared_remote")}
    out = []
    for (w, n, p), r in cell.items():
        if p != "bounded-load":
            continue
        ch, rr = cell.get((w, n, "consistent-hash")), cell.get((w, n, "round-robin"))
        if ch:
            out.append(_target(w, n, "hit rate vs consistent hashing", r["hit_rate"] / ch["hit_rate"],
                               bound=HIT_SHARE_OF_HASHING, at_least=True))
        out.append(_target(w, n, "max/mean load", r["max_over_mean_load"], bound=LOAD_BOUND,
                           at_least=False))
        if rr and n == 8:
            out.append(_target(w, n, "hit rate vs round robin", r["hit_rate"] / rr["hit_rate"],
                               bound=ROUND_ROBIN_FACTOR, at_least=True))
    return out


def check_shared_targets(results: list[dict], workloads: list[dict]) -> list[dict]:
    """With the shared remote tier, 8 replicas: round robin's and bounded loads' hit rate as
    a share of the unlimited-cache rate."""
    unlimited = {w["name"]: w["unlimited_hit_rate"] for w in workloads}
    return [_target(r["workload"], r["replicas"], f"shared tier, {r['policy']}: of unlimited",
                    r["hit_rate"] / unlimited[r["workload"]], bound=SHARED_TARGETS[r["policy"]],
                    at_least=True)
            for r in results if r.get("shared_remote") and r["replicas"] == 8
            and r["policy"] in SHARED_TARGETS and unlimited[r["workload"]] > 0]


def _target(workload: str, replicas: int, check: str, value: float, *, bound: float, at_least: bool) -> dict:
    met = value >= bound if at_least else value <= bound
    return {"workload": workload, "replicas": replicas, "check": check, "value": value,
            "bound": f"{'>=' if at_least else '<='} {bound:g}", "met": met}


def print_report(report: dict) -> None:
    for w in report["workloads"]:
        print(f"{w['name']}: {w['requests']} requests, {w['distinct_keys']} router keys, "
              f"{w['distinct_blocks']} distinct blocks of {w['block_tokens']} tokens, "
              f"unlimited cache {100 * w['unlimited_hit_rate']:.1f}%")
    rows = report["results"]
    print(f"{'workload':<12}{'replicas':>8}  {'policy':<16}{'hit %':>7}{'max/mean':>9}{'p99':>6}"
          f"{'req share':>10}{'split %':>8}{'util %':>7}{'TTFT s':>8}")
    for r in rows:
        if r.get("shared_remote"):
            continue
        print(f"{r['workload']:<12}{r['replicas']:>8}  {r['policy']:<16}{100 * r['hit_rate']:>7.1f}"
              f"{r['max_over_mean_load']:>9.2f}{r['peak_over_mean_load']:>6.2f}"
              f"{r['request_share_max_over_mean']:>10.2f}{100 * r['keys_split']:>8.1f}"
              f"{100 * r['utilisation']:>7.1f}{r['mean_ttft_s']:>8.2f}")
    print("max/mean: in-flight load at each arrival, averaged; p99: its 99th percentile; req share: "
          "busiest replica's requests / mean; split: router keys served by more than one replica")
    shared = [r for r in rows if r.get("shared_remote")]
    if shared:
        cfg = report["config"]
        unlimited = {w["name"]: w["unlimited_hit_rate"] for w in report["workloads"]}
        isolated = {(r["workload"], r["replicas"], r["policy"]): r for r in rows
                    if not r.get("shared_remote")}
        print(f"shared remote tier ({cfg['remote_cache']:g} of distinct blocks; {cfg['remote_gbps']:g} GB/s, "
              f"{cfg['kv_bytes_per_token']} KV bytes/token; a remote hit costs what its recompute does at "
              f"{report['workloads'][0]['remote_break_even_gbps']:.2f} GB/s):")
        print(f"{'workload':<12}{'replicas':>8}  {'policy':<16}{'isolated %':>11}{'shared %':>9}"
              f"{'of unlim.':>10}{'remote %':>9}{'util %':>7}{'TTFT s':>9}{'isol. TTFT':>11}")
        for r in shared:
            i = isolated.get((r["workload"], r["replicas"], r["policy"]), {})
            u = unlimited[r["workload"]]
            print(f"{r['workload']:<12}{r['replicas']:>8}  {r['policy']:<16}"
                  f"{100 * i.get('hit_rate', float('nan')):>11.1f}{100 * r['hit_rate']:>9.1f}"
                  f"{r['hit_rate'] / u if u else 0:>10.2f}{100 * r['remote_hit_share']:>9.1f}"
                  f"{100 * r['utilisation']:>7.1f}{r['mean_ttft_s']:>9.2f}"
                  f"{i.get('mean_ttft_s', float('nan')):>11.2f}")
        print("of unlim.: hit rate over the unlimited-cache rate; remote: share of the hits served by the "
              "remote tier")
    print("targets:")
    for t in report["targets"]:
        print(f"  {t['workload']:<12}{t['replicas']:>3} replicas  {t['check']:<38}{t['value']:>6.2f} "
              f"{t['bound']:<8}{'met' if t['met'] else 'NOT MET'}")
    print(f"wall time {report['wall_seconds']:.1f} s")


def plot(report: dict, path: Path) -> None:
    """Per workload: hit rate of each policy, one bar per fleet size, isolated hosts and with
    the shared remote tier; and max/mean load of the isolated hosts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = list(dict.fromkeys(r["workload"] for r in rows))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fleets = sorted({r["replicas"] for r in rows})
    cell = {(r["workload"], r["replicas"], r["policy"], bool(r.get("shared_remote"))): r for r in rows}
    shared = sorted({bool(r.get("shared_remote")) for r in rows})
    unlimited = {w["name"]: w["unlimited_hit_rate"] for w in report["workloads"]}
    fig, axes = plt.subplots(len(names), 2, figsize=(12, 3.8 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        for ax, metric, series in ((row[0], "hit_rate", [(n, s) for s in shared for n in fleets]),
                                   (row[1], "max_over_mean_load", [(n, False) for n in fleets])):
            width = 0.8 / len(series)
            for j, (n, s) in enumerate(series):
                scale = 100 if metric == "hit_rate" else 1
                values = [cell[name, n, p, s][metric] * scale for p in policies]
                ax.bar([i + j * width for i in range(len(policies))], values, width,
                       label=f"{n} replicas{', shared remote tier' if s else ''}", hatch="//" if s else None)
            centres = [i + width * (len(series) - 1) / 2 for i in range(len(policies))]
            ax.set_xticks(centres, policies, fontsize=8)
            ax.set_ylabel("hit rate (%)" if metric == "hit_rate" else "max/mean in-flight load (isolated)")
            ax.set_title(name)
            ax.grid(True, axis="y", alpha=0.3)
        row[0].axhline(100 * unlimited[name], color="k", linestyle=":", linewidth=1, label="unlimited cache")
        row[0].legend(fontsize=7)
        row[1].axhline(LOAD_BOUND, color="k", linestyle="--", linewidth=1, label=f"target {LOAD_BOUND}")
        row[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
