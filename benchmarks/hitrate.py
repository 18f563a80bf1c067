"""Cache hit rate: replay a trace through the real store, against LRU and Belady's bound.

``kvtier bench hitrate`` replays a Mooncake-style trace (or ``synthetic:NAME``, or an
OpenAI chat log as ``chat:FILE``) through ``TieredStore`` with metadata-only tiers, for
every policy and capacity, one replay per worker process. It prints a table (hit rate per
policy and capacity, Belady's offline optimum, the share of the LRU-to-Belady gap each
policy closes), writes JSON and plots, and estimates the prefill saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

DEFAULT_CAPACITIES = (0.01, 0.02, 0.05, 0.1, 0.2)
DEFAULT_POLICIES = ("lru", "fifo", "slru", "mq", "adaptive", "default")
# One 512-token block of SmolLM2-135M's KV cache in bf16: 30 layers x K,V x 3 heads x 64 x 2 B.
DEFAULT_BLOCK_BYTES = 30 * 2 * 3 * 64 * 2 * 512
_TIER_FLAGS = ("hbm", "dram", "flash")
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """``"8GiB"``, ``"500M"`` or ``"1e9"`` as bytes."""
    t = text.strip().lower().removesuffix("b")
    unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if u and t.endswith(u)), "")
    try:
        return int(float(t[: len(t) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 8GiB, 500MB, 1e9)") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default=None, help="Mooncake-style JSONL (default: "
                   "../shared/data/traces/mooncake_conversation.jsonl), synthetic:NAME or chat:FILE")
    p.add_argument("--block-tokens", type=int, default=None,
                   help="tokens per block (512 for Mooncake traces, 16 for chat logs)")
    p.add_argument("--requests", type=int, default=None, help="size of a synthetic trace")
    p.add_argument("--seed", type=int, default=0, help="seed of a synthetic trace")
    p.add_argument("--tokenizer", default=None, help="GGUF file or HF folder for chat:FILE "
                   "(default: the default model's)")
    p.add_argument("--save-trace", type=Path, help="write the (synthetic or converted) trace as JSONL")
    p.add_argument("--capacity", type=float, nargs="+", default=list(DEFAULT_CAPACITIES),
                   help="capacities as fractions of the trace's distinct blocks (one DRAM tier)")
    for name in _TIER_FLAGS:
        p.add_argument(f"--{name}", type=parse_bytes, help=f"bytes of the {name} tier (instead of "
                       "--capacity; tiers given together form one store)")
    p.add_argument("--block-bytes", type=int, default=DEFAULT_BLOCK_BYTES, help="bytes of one block")
    p.add_argument("--policy", nargs="+", default=list(DEFAULT_POLICIES),
                   help="eviction policies; 'default' is the store's default")
    p.add_argument("--prefill-tps", type=float, default=None, help="engine prefill tokens/s for "
                   "the savings estimate (default: a nominal figure; measure with kvtier bench)")
    p.add_argument("--bandwidth", nargs="+", default=[], metavar="TIER=BYTES_PER_S",
                   help="tier read bandwidths for the savings estimate (kvtier bench tiers)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="replay processes")
    p.add_argument("--memory", action="store_true", help="also measure each replay's peak Python "
                   "memory (tracemalloc; replays run about twice as slow)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--plot", type=Path, help="hit-rate plot (PNG); the per-tier one goes beside it")


def run(args: argparse.Namespace) -> int:
    from benchmarks.traces import distinct_blocks

    started = time.perf_counter()
    requests, label, block_tokens = load_trace(args)
    if args.save_trace:
        from benchmarks.traces import dump_jsonl

        dump_jsonl(requests, args.save_trace, block_tokens)
    distinct = distinct_blocks(requests)
    if not distinct:
        raise ValueError(f"trace {label} has no full blocks")
    stores = store_specs(args, distinct)
    report = measure(requests, stores, args.policy, args.workers, args.block_bytes,
                     memory=args.memory)
    report.update(trace=label, block_tokens=block_tokens, block_bytes=args.block_bytes,
                  wall_seconds=round(time.perf_counter() - started, 2))
    add_savings(report, args, block_tokens, len(requests))
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        from benchmarks.plots import plot_hit_rates, plot_tiers

        plot_hit_rates(report, args.plot)
        plot_tiers(report, args.plot.with_name(args.plot.stem + "-tiers.png"))
        print(f"wrote {args.plot}")
    return 0


def load_trace(args: argparse.Namespace) -> tuple[list, str, int]:
    """(requests, a label, tokens per block) for ``--trace``."""
    from benchmarks import traces

    spec = args.trace or str(traces.DEFAULT_TRACE)
    if spec.startswith("synthetic:"):
        from benchmarks.synthetic import DEFAULT_REQUESTS, generate

        name = spec.removeprefix("synthetic:")
        return generate(name, args.seed, args.requests or DEFAULT_REQUESTS), spec, args.block_tokens or 16
    if spec.startswith("chat:"):
        from benchmarks.chatlog import load_chatlog, load_tokenizer

        bt = args.block_tokens or 16
        return load_chatlog(spec.removeprefix("chat:"), load_tokenizer(args.tokenizer), bt), spec, bt
    bt = args.block_tokens or traces.MOONCAKE_BLOCK_TOKENS
    return traces.load_jsonl(spec, bt), Path(spec).name, bt


def store_specs(args: argparse.Namespace, distinct: int) -> list[tuple[float, list]]:
    """(capacity fraction, tier specs) of each store to replay."""
    from benchmarks.replay import TierSpec

    sized = [TierSpec(n, getattr(args, n)) for n in _TIER_FLAGS if getattr(args, n)]
    if sized:
        total = sum(t.capacity_bytes for t in sized) // args.block_bytes
        return [(total / distinct, sized)]
    if any(f <= 0 for f in args.capacity):
        raise ValueError(f"--capacity fractions must be positive, got {args.capacity}")
    return [(f, [TierSpec("dram", max(1, round(f * distinct)) * args.block_bytes)]) for f in args.capacity]


def measure(requests: list, stores: list[tuple[float, list]], policies: list[str], workers: int,
            block_bytes: int, *, memory: bool = False) -> dict:
    """Replays of every (policy, store) and the offline references at every capacity, in
    worker processes. ``memory``: each replay also reports its peak traced memory."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm import tqdm

    from benchmarks.replay import request_blocks
    from benchmarks.traces import distinct_blocks, unlimited_hit_rate

    _TRACE[:] = [requests, request_blocks(requests, block_bytes)]
    from tiers.registry import DEFAULT_POLICY

    # "default" is replayed once, under its own name, when that policy is listed too.
    aliases = {"default": DEFAULT_POLICY} if "default" in policies and DEFAULT_POLICY in policies else {}
    runs = [p for p in dict.fromkeys(policies) if p not in aliases]
    jobs = [(ref, f, t) for ref in _OFFLINE for f, t in stores] + [(p, f, t) for p in runs for f, t in stores]
    jobs.sort(key=lambda job: -_replay_cost(job[0]))  # slowest first: none is left to run alone at the end
    ctx = multiprocessing.get_context("fork")  # workers inherit _TRACE without pickling it
    results: list[dict] = []
    offline: dict[str, list[dict]] = {ref: [] for ref in _OFFLINE}
    with ProcessPoolExecutor(max(1, min(workers, len(jobs))), mp_context=ctx) as pool:
        futures = {pool.submit(_job, name, tiers, block_bytes, memory): (name, f) for name, f, tiers in jobs}
        for fut in tqdm(as_completed(futures), total=len(jobs), desc="replays", file=sys.stderr):
            name, f = futures[fut]
            if name in offline:
                offline[name].append({"capacity_fraction": f, "hit_rate": fut.result()})
            else:
                results.append({"policy": name, "capacity_fraction": f, **fut.result()})
    for alias, name in aliases.items():
        results += [{**r, "policy": alias} for r in results if r["policy"] == name]
    order = {p: i for i, p in enumerate(policies)}
    results.sort(key=lambda r: (order[r["policy"]], r["capacity_fraction"]))
    for rows in offline.values():
        rows.sort(key=lambda b: b["capacity_fraction"])
    return {"requests": len(requests), "distinct_blocks": distinct_blocks(requests), "results": results,
            "unlimited_hit_rate": unlimited_hit_rate(requests), **offline,
            "gap_closed": gap_closed(results, offline["belady"])}


_TRACE: list = []  # [requests, their store blocks], set in the parent before workers fork
_OFFLINE = ("belady", "oracle_admission")  # the offline references' keys in the report


def _replay_cost(name: str) -> float:
    """A replay's relative cost (1: one policy structure), for ordering the jobs."""
    from tiers.registry import POLICIES

    return getattr(POLICIES.get(name), "REPLAY_COST", 1)


def _job(name: str, tiers: list, block_bytes: int, memory: bool = False) -> float | dict:
    requests, blocks = _TRACE
    capacity_blocks = sum(t.capacity_bytes for t in tiers) // block_bytes
    if name in _OFFLINE:
        from benchmarks.belady import belady_hit_rate, oracle_admission_hit_rate

        reference = belady_hit_rate if name == "belady" else oracle_admission_hit_rate
        return reference(requests, capacity_blocks)
    from benchmarks.replay import replay

    t0 = time.perf_counter()
    if memory:
        tracemalloc.start()
    out = replay(blocks, tiers, name)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    if memory:
        # The store's metadata and its policy at their largest; the trace was allocated before.
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out.update(peak_bytes=peak, peak_bytes_per_block=round(peak / capacity_blocks))
    return {"capacity_blocks": capacity_blocks, **out}


def gap_closed(results: list[dict], belady: list[dict]) -> list[dict]:
    """Share of the LRU-to-Belady gap each policy closes at each capacity (where LRU ran
    and the gap is not zero)."""
    lru = {r["capacity_fraction"]: r["hit_rate"] for r in results if r["policy"] == "lru"}
    best = {b["capacity_fraction"]: b["hit_rate"] for b in belady}
    out = []
    for r in results:
        f = r["capacity_fraction"]
        if f in lru and best[f] - lru[f] > 1e-9:
            out.append({"policy": r["policy"], "capacity_fraction": f,
                        "value": (r["hit_rate"] - lru[f]) / (best[f] - lru[f])})
    return out


def add_savings(report: dict, args: argparse.Namespace, block_tokens: int, num_requests: int) -> None:
    """Prefill compute and TTFT saved by each replay (see ``benchmarks.sizing``)."""
    from benchmarks.sizing import DEFAULT_BANDWIDTH, DEFAULT_PREFILL_TPS, Deployment, savings

    bandwidth = dict(DEFAULT_BANDWIDTH)
    for item in args.bandwidth:
        name, _, value = item.partition("=")
        bandwidth[name] = float(parse_bytes(value))
    d = Deployment(block_tokens, args.block_bytes, args.prefill_tps or DEFAULT_PREFILL_TPS, bandwidth)
    report["deployment"] = {"prefill_tps": d.prefill_tps, "bandwidth": bandwidth}
    for r in report["results"]:
        r["savings"] = savings(r, num_requests, d)


_SHOWN_GAP = 0.005


def print_table(report: dict) -> None:
    results = report["results"]
    fractions = sorted({r["capacity_fraction"] for r in results})
    bel = {b["capacity_fraction"]: b["hit_rate"] for b in report["belady"]}
    lru = {r["capacity_fraction"]: r["hit_rate"] for r in results if r["policy"] == "lru"}
    # A share of a gap under half a point is noise in a percentage: left blank (kept in the JSON).
    gaps = {(g["policy"], g["capacity_fraction"]): g["value"] for g in report["gap_closed"]
            if bel[g["capacity_fraction"]] - lru[g["capacity_fraction"]] >= _SHOWN_GAP}
    print(f"{report['trace']}: {report['requests']} requests, {report['distinct_blocks']} distinct blocks, "
          f"unlimited cache {100 * report['unlimited_hit_rate']:.1f}%")
    print("hit rate % (gap to Belady closed vs LRU)")
    print(f"{'policy':<10}" + "".join(f"{f:>16.3g}" for f in fractions))
    cells = {(r["policy"], r["capacity_fraction"]): r["hit_rate"] for r in results}
    for p in dict.fromkeys(r["policy"] for r in results):
        row = ""
        for f in fractions:
            gap = gaps.get((p, f))
            row += f"{100 * cells[p, f]:>8.1f}" + (f" ({100 * gap:>4.0f}%)" if gap is not None else " " * 8)
        print(f"{p:<10}{row}")
    admit = {b["capacity_fraction"]: b["hit_rate"] for b in report["oracle_admission"]}
    for name, rates in (("lru+admit", admit), ("belady", bel)):
        print(f"{name:<10}" + "".join(f"{100 * rates[f]:>8.1f}        " for f in fractions))
    print("lru+admit: LRU told which blocks are never used again (offline, like belady)")
    if "peak_bytes_per_block" in results[0]:
        print("peak memory of the store and its policy, bytes per block of capacity")
        for p in dict.fromkeys(r["policy"] for r in results):
            row = (r["peak_bytes_per_block"] for r in results if r["policy"] == p)
            print(f"{p:<10}" + "".join(f"{b:>16,}" for b in row))
    print(f"wall time {report['wall_seconds']:.1f} s")
