"""Engine plugins' cost over the plain cache client: SGLang's storage backend and vLLM's
worker connector beside raw CacheClient calls and memcpy of the same bytes.

One run starts a real ``kvtier serve`` (a Unix socket, DRAM for a few turns' payloads, no
flash) and, per engine and transport (``unix://``: blocks copied out of the service's
shared DRAM; ``kvtier://`` TCP on loopback), takes ``--reps`` turns. A turn saves one
batch through the plugin and the same bytes through raw ``CacheClient.put`` under keys of
its own, then loads both back (plugin; raw ``CacheClient.get_into``), and copies the same
bytes with numpy (the machine's copy rate); who goes first alternates each turn, so noise
hits both alike. After each turn every target is checked byte for byte against its
source and the turn's entries are deleted.

- **sglang**: ``batch_set_v1`` / ``batch_get_v1`` of ``--pages`` host-pool pages
  (``benchmarks.plugins_sglang``; a page is Llama-3-8B's, 8 MiB in two 4 MiB runs).
- **vllm**: a save run and a load run of ``--blocks`` blocks through the worker connector
  (``benchmarks.plugins_vllm``; a block is Llama-3-8B's at block size 16, 2 MiB).

A first turn warms up untimed; the median of the others counts. GB/s = 1e9 payload bytes
per second. No targets: the ratios plugin/raw and plugin/memcpy are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

MIB = 1 << 20
DEFAULT_JSON = "benchmarks/results/plugins.json"
ENGINES = ("sglang", "vllm")
TRANSPORTS = ("unix", "tcp")
MOVES = ("plugin_save", "raw_save", "plugin_load", "raw_load")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated (default sglang,vllm)")
    parser.add_argument("--pages", type=int, default=8, help="SGLang pages per call (default 8: 64 MiB)")
    parser.add_argument("--blocks", type=int, default=32, help="vLLM blocks per run (default 32: 64 MiB)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny page and block shapes (4 tokens, 2 layers, 2 heads, 8 wide): a smoke run")
    parser.add_argument("--reps", type=int, default=15, help="turns per measurement; the median counts")
    parser.add_argument("--json", metavar="FILE", default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")


def run(args: argparse.Namespace) -> int:
    from cacheserver.process import ServiceProcess

    engines = args.engines.split(",")
    unknown = set(engines) - set(ENGINES)
    if unknown:
        raise ValueError(f"unknown engines {sorted(unknown)}; choose among {list(ENGINES)}")
    with tempfile.TemporaryDirectory(prefix="kvtier-bench-plugins-") as folder:
        paths = _path_makers(Path(folder), engines, args)
        biggest = max(nbytes for nbytes, _ in paths.values())
        # A turn stores 2 x its payload (plugin and raw) and deletes it after; 4 x leaves slack.
        dram_gb = max(4 * biggest, 64 * MIB) / (1 << 30)
        socket = str(Path(folder) / "kvtier.sock")
        service = ServiceProcess(Path(folder) / "serve", {"unix_socket": socket, "dram_gb": dram_gb,
                                                          "flash_gb": 0, "policy": "lru"}).start()
        urls = {"unix": f"unix://{socket}", "tcp": service.data_url}
        try:
            results = [measure(make, engine, transport, urls[transport], args.reps)
                       for engine, (_, make) in paths.items() for transport in TRANSPORTS]
        finally:
            service.stop()
    report = {"reps": args.reps, "cpus": os.cpu_count(), "results": results}
    print(render(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _path_makers(folder: Path, engines: list[str], args: argparse.Namespace) -> dict:
    """engine -> (payload bytes per call, ``make(url)`` -> a path for one transport)."""
    makers = {}
    timeout_s = 60.0  # a 64 MiB call on a busy 2-core machine; the default 1 s is an engine's budget
    if "sglang" in engines:
        from benchmarks.plugins_sglang import PageShape, SGLangPath

        page = PageShape(4, 2, 2, 8) if args.tiny else PageShape()
        makers["sglang"] = (args.pages * page.nbytes,
                            lambda url: SGLangPath(url, page, args.pages, timeout_s))
    if "vllm" in engines:
        from benchmarks.plugins_vllm import BlockShape, VLLMPath

        block = BlockShape(4, 2, 2, 8) if args.tiny else BlockShape()
        makers["vllm"] = (args.blocks * block.nbytes,
                          lambda url: VLLMPath(folder, url, block, args.blocks, timeout_s))
    return makers


def measure(make, engine: str, transport: str, url: str, reps: int) -> dict:
    """GB/s of each move, median of ``reps`` turns, for one engine over one transport."""
    path = make(url)
    times: dict[str, list[float]] = {name: [] for name in (*MOVES, "memcpy")}
    try:
        for turn in range(-1, reps):  # turn -1 warms up (first touches of fresh memory), untimed
            path.prepare(turn)
            order = 1 if turn % 2 else -1
            for pair in (MOVES[:2], MOVES[2:], ("memcpy",)):
                for name in pair[::order]:
                    t0 = time.perf_counter()
                    getattr(path, name)()
                    if turn >= 0:
                        times[name].append(time.perf_counter() - t0)
            path.check()
        counters = path.counters()
    finally:
        path.close()
    def rate(seconds: float) -> float:  # GB/s to 3 significant digits (tiny test runs stay > 0)
        return float(f"{path.nbytes / seconds / 1e9:.3g}")

    gbps = {name: rate(statistics.median(t)) for name, t in times.items()}
    spread = {name: [rate(max(t)), rate(min(t))]
              for name, t in times.items()}  # the slowest and fastest turn: how much noise there was
    ratios = {}
    for op in ("save", "load"):
        ratios[f"{op}_vs_raw"] = round(gbps[f"plugin_{op}"] / gbps[f"raw_{op}"], 2)
        ratios[f"{op}_vs_memcpy"] = round(gbps[f"plugin_{op}"] / gbps["memcpy"], 2)
    return {"engine": engine, "transport": transport, "bytes": path.nbytes, "checked_turns": reps + 1,
            **{f"{name}_gbps": v for name, v in gbps.items()}, **ratios,
            "gbps_range": spread, "counters": counters}


def render(report: dict) -> str:
    ratios = f"{'raw':>6} {'/raw':>5} {'/cpy':>5}"
    head = f"{'engine':<7}{'via':<5}{'MiB':>5} {'memcpy':>7} | {'save':>6} {ratios} | {'load':>6} {ratios}"
    lines = [f"Plugin vs raw CacheClient vs memcpy, same bytes, median of {report['reps']} turns, GB/s "
             f"({report['cpus']} CPUs)", head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['engine']:<7}{r['transport']:<5}{r['bytes'] / MIB:>5.0f} {r['memcpy_gbps']:>7.2f} | "
            f"{r['plugin_save_gbps']:>6.2f} {r['raw_save_gbps']:>6.2f} {r['save_vs_raw']:>5.2f} "
            f"{r['save_vs_memcpy']:>5.2f} | {r['plugin_load_gbps']:>6.2f} {r['raw_load_gbps']:>6.2f} "
            f"{r['load_vs_raw']:>5.2f} {r['load_vs_memcpy']:>5.2f}")
    lines.append("save/load: the plugin; raw: CacheClient put/get_into of the same bytes; "
                 "/raw, /cpy: the plugin's ratio to raw and to memcpy")
    return "\n".join(lines)
