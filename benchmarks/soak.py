"""soak: concurrent clients doing lookups, gets and puts against a small DRAM tier (eviction all the time).

Passes with zero errors, no corrupt block and bounded memory.

For each ``--policy`` in turn (the same seed each time, so they compare in one run):
starts its own ``kvtier serve`` (DRAM only, ``--dram-mb``) with that eviction policy, runs
``--clients`` threads for ``--seconds``, each with its own ``CacheClient``: put a new chain
of blocks (payloads derived from their keys), look up and get a chain put earlier, verify
every payload that comes back. Latencies are kept per operation (lookup, get, put), and
the p99 of each is compared with the first policy's. Samples the service's RSS
(``/proc/PID/status``) throughout. Fails (exit 1) on any client error, any corrupt block,
or RSS above the bound: the RSS at start, plus the DRAM capacity, plus each connection's
buffers (a GET arena and a body buffer), plus a fixed allowance.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHAIN = 4  # blocks per put
_CONN_MIB = 6  # per connection: a 4 MiB GET arena and a body buffer, rounded up
_FIXED_MIB = 64  # threads, allocator slack, interpreter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    p.add_argument("--dram-mb", type=int, default=16, help="the service's DRAM tier (default 16 MiB)")
    p.add_argument("--block-kb", type=int, default=16, help="payload size (default 16 KiB)")
    p.add_argument("--seed", type=int, default=8)
    p.add_argument("--rate", type=float, default=0.0, help="requests per second per client (default 0: "
                   "as fast as each can; a rate below saturation compares latency rather than throughput)")
    p.add_argument("--policy", nargs="+", default=["default"],
                   help="eviction policies, one service each, in this order (default: the default; "
                   "e.g. lru adaptive to compare adaptive's latency with lru's)")
    p.add_argument("--json", help="write the results here")


def payload_for(key: bytes, size: int) -> bytes:
    return (key * (size // len(key) + 1))[:size]


def make_chain(rng: random.Random, size: int) -> list[tuple[bytes, bytes, int, bytes]]:
    keys = [rng.randbytes(16) for _ in range(CHAIN + 1)]  # a root, then the chain
    return [(k, p, i, payload_for(k, size)) for i, (k, p) in enumerate(zip(keys[1:], keys, strict=False))]


OPS = ("lookup", "get", "put")


@dataclass
class Tally:
    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPS})
    errors: int = 0
    corrupt: int = 0
    hits: int = 0
    misses: int = 0


def client_loop(url: str, seed: int, size: int, deadline: float, tally: Tally, *, rate: float = 0.0) -> None:
    from clients.cache_client import CacheClient
    from clients.guard import ClientOptions

    rng = random.Random(seed)
    mine: list[list[bytes]] = []
    due = time.monotonic()
    with CacheClient(url, ClientOptions(timeout=10.0)) as c:
        while time.monotonic() < deadline:
            if rate:  # paced: each request starts on its schedule (late ones at once)
                due += 1 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            started = time.perf_counter()
            if not mine or rng.random() < 0.4:
                op = "put"
                blocks = make_chain(rng, size)
                c.put(blocks)
                mine.append([b[0] for b in blocks])
            else:
                keys = rng.choice(mine[-8:])  # recent chains: some hit, older ones were evicted
                if rng.random() < 0.5:
                    op = "lookup"
                    c.lookup(keys)
                else:
                    op = "get"
                    for key, got in zip(keys, c.get(keys), strict=True):
                        tally.misses += got is None
                        tally.hits += got is not None
                        tally.corrupt += got is not None and bytes(got) != payload_for(key, size)
            tally.latencies_ms[op].append((time.perf_counter() - started) * 1000)
        tally.errors = c.counters.failures


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] if sorted_values else 0.0


def soak(args: argparse.Namespace, pid: int, url: str) -> dict:
    tallies = [Tally() for _ in range(args.clients)]
    deadline = time.monotonic() + args.seconds
    threads = [threading.Thread(target=client_loop, kwargs={"rate": args.rate},
                                args=(url, args.seed * 1000 + i, args.block_kb << 10, deadline, t))
               for i, t in enumerate(tallies)]
    baseline = rss_mib(pid)
    peak = baseline
    started = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mib(pid))
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    lat = sorted(x for t in tallies for op in OPS for x in t.latencies_ms[op])
    by_op = {op: sorted(x for t in tallies for x in t.latencies_ms[op]) for op in OPS}
    bound = baseline + args.dram_mb + args.clients * _CONN_MIB + _FIXED_MIB
    return {"clients": args.clients, "rate": args.rate, "seconds": round(elapsed, 2), "requests": len(lat),
            "requests_per_s": round(len(lat) / elapsed, 1), "p50_ms": round(percentile(lat, 0.5), 3),
            "p99_ms": round(percentile(lat, 0.99), 3),
            "ops": {op: {"requests": len(v), "p50_ms": round(percentile(v, 0.5), 3),
                         "p99_ms": round(percentile(v, 0.99), 3)} for op, v in by_op.items()},
            "errors": sum(t.errors for t in tallies),
            "corrupt_blocks": sum(t.corrupt for t in tallies), "hits": sum(t.hits for t in tallies),
            "misses": sum(t.misses for t in tallies), "rss_start_mib": round(baseline, 1),
            "rss_peak_mib": round(peak, 1), "rss_bound_mib": round(bound, 1), "dram_mb": args.dram_mb}


def run(args: argparse.Namespace) -> int:
    runs = [soak_policy(args, policy) for policy in args.policy]
    for r in runs[1:]:  # p99 of each operation against the first policy's, in the same run
        r["p99_vs_first"] = {op: round(r["ops"][op]["p99_ms"] / max(runs[0]["ops"][op]["p99_ms"], 1e-9), 2)
                             for op in OPS}
    for r in runs:
        print_run(r)
    ok = all(r["ok"] for r in runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"ok": ok, "runs": runs}, indent=2))
    return 0 if ok else 1


def soak_policy(args: argparse.Namespace, policy: str) -> dict:
    """One service with ``policy``, soaked; the result and whether it passed (``ok``)."""
    import httpx

    from cacheserver.process import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="kvtier-soak-") as folder:
        settings = {"dram_gb": args.dram_mb / 1024, "flash_gb": 0, "policy": policy}
        served = ServiceProcess(Path(folder), settings).start()
        try:
            result = {"policy": policy, **soak(args, served.pid, served.data_url)}
            stats = httpx.get(served.rest_url + "/v1/stats").json()
            result["evictions"] = sum(t["evictions"] for t in stats["tiers"])
            result["policy_stats"] = [t["policy_stats"] for t in stats["tiers"]]
            result["server_errors"] = stats["data_plane"]["errors"]
        finally:
            served.stop()
    bounded = result["rss_peak_mib"] <= result["rss_bound_mib"]
    result["ok"] = not result["errors"] and not result["corrupt_blocks"] and bounded
    return result


def print_run(result: dict) -> None:
    name = f"soak {result['policy']}"
    print(f"{name}: {result['clients']} clients, {result['seconds']} s: {result['requests']} requests, "
          f"{result['requests_per_s']} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms")
    ratios = result.get("p99_vs_first", {})
    for op, o in result["ops"].items():
        vs = f" ({ratios[op]}x the first policy's)" if op in ratios else ""
        print(f"{name}: {op:<6} {o['requests']} requests, p50 {o['p50_ms']} ms, p99 {o['p99_ms']} ms{vs}")
    print(f"{name}: errors {result['errors']}, corrupt blocks {result['corrupt_blocks']}, evictions "
          f"{result['evictions']}, hits {result['hits']}, misses {result['misses']}")
    if any(result["policy_stats"]):
        print(f"{name}: policy {result['policy_stats']}")
    print(f"{name}: service RSS {result['rss_start_mib']} MiB at start, peak {result['rss_peak_mib']} MiB, "
          f"bound {result['rss_bound_mib']} MiB -> {'OK' if result['ok'] else 'FAILED'}")
