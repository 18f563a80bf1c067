"""Remote tier GET and PUT GB/s: kvtier's remote tier against raw redis-py, same cluster.

One run starts a real Redis Cluster on loopback (3 primaries, no replicas;
``benchmarks.redis_servers``), or uses an existing one (``--remote URL``), and for each
payload size writes and reads a chain of ``--blocks`` blocks two ways, taking turns (and
turns about going first) so a noisy neighbour or a server still busy hurts both alike:

- **kvtier**: ``RemoteTier.write_behind`` + ``drain`` (encode: key, flash record header,
  checksum, cut at a jemalloc class; pipelined SETs from the writer thread), and
  ``RemoteTier.fetch`` (one pipeline of head and tail GETs per block, every value verified:
  key, header, xxh3-64; a cut value's two parts are not joined, a tier copies them in);
- **raw redis-py**: one pipeline of SETs, and one of GETs, of the same payloads under keys
  of their own (no header, no checksum, no tail).

The median of ``--reps`` turns counts. GB/s = 1e9 payload bytes per second. Target (issue
23): kvtier GET >= 0.8x raw at 360 KiB and 2 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

KIB, MIB = 1 << 10, 1 << 20
SIZES = {"360KiB": 360 * KIB, "2MiB": 2 * MIB}
GET_TARGET = 0.8  # kvtier GET / raw redis-py GET, at every size
DEFAULT_JSON = "benchmarks/results/remote/bench-remote.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", metavar="URL", help="an existing Redis Cluster or server "
                        "(redis://host:port); default: start a 3-primary cluster on loopback")
    parser.add_argument("--sizes", default="360KiB,2MiB",
                        help="payload sizes, comma-separated: names among "
                        f"{list(SIZES)} or bytes (default 360KiB,2MiB)")
    parser.add_argument("--blocks", type=int, default=16, help="blocks per chain (one pipeline; default 16)")
    parser.add_argument("--reps", type=int, default=10, help="turns per measurement; the median counts")
    parser.add_argument("--json", metavar="FILE", default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")


def _size(name: str) -> int:
    return SIZES[name] if name in SIZES else int(name)


def run(args: argparse.Namespace) -> int:
    from benchmarks.redis_servers import RedisCluster
    from cacheserver.memory import keep_freed_buffers

    keep_freed_buffers()  # as kvtier serve does: block-sized replies reuse freed heap buffers
    sizes = {name: _size(name) for name in args.sizes.split(",")}
    with tempfile.TemporaryDirectory(prefix="kvtier-bench-remote-") as folder:
        cluster = None
        url = args.remote
        if url is None:
            cluster = RedisCluster(Path(folder), primaries=3, replicas=0).start()
            url = cluster.urls[0]
        try:
            report = measure(url, sizes, args.blocks, args.reps)
            report["started_cluster"] = cluster is not None
        finally:
            if cluster is not None:
                cluster.stop()
    print(render(report))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure(url: str, sizes: dict[str, int], blocks: int = 16, reps: int = 10) -> dict:
    """GET and PUT GB/s, kvtier against raw redis-py, per payload size (``name -> bytes``)."""
    from tiers.remote import RemoteSettings, RemoteTier, _connect

    settings = RemoteSettings((url,), timeout_s=10, queue_bytes=4 * blocks * (max(sizes.values()) + 4 * KIB))
    remote = RemoteTier(settings)
    raw, mode = _connect(settings)  # the same client kvtier builds: cluster when the server is one
    try:
        results = {name: _measure_size(remote, raw, payload, blocks, reps) for name, payload in sizes.items()}
    finally:
        remote.close()
        raw.close()
    met = all(r["get_ratio"] >= GET_TARGET for r in results.values())
    return {"mode": mode, "blocks": blocks, "reps": reps, "cpus": os.cpu_count(), "results": results,
            "target": {"get_ratio_at_least": GET_TARGET, "met": met}}


def _measure_size(remote, raw, payload: int, blocks: int, reps: int) -> dict:
    datas = [os.urandom(payload) for _ in range(blocks)]
    times: dict[str, list[float]] = {"kvtier_put": [], "raw_put": [], "kvtier_get": [], "raw_get": []}
    for turn in range(reps):  # fresh keys every turn: each put really stores
        _turn(remote, raw, datas, turn, times)
    gbps = {k: round(blocks * payload / statistics.median(v) / 1e9, 3) for k, v in times.items()}
    return {"payload": payload, **{f"{k}_gbps": v for k, v in gbps.items()},
            "get_ratio": round(gbps["kvtier_get"] / gbps["raw_get"], 2),
            "put_ratio": round(gbps["kvtier_put"] / gbps["raw_put"], 2)}


def _turn(remote, raw, datas: list[bytes], turn: int, times: dict[str, list[float]]) -> None:
    """One turn: PUT then GET the payloads both ways under fresh keys, checking every value;
    who goes first alternates with ``turn`` (the server is still settling a burst of writes
    when the first read starts, and that must not fall on one side only)."""
    from tiers import remote_value
    from tiers.base import make_block, payload_parts

    chain = [make_block(os.urandom(16), os.urandom(16), i, d) for i, d in enumerate(datas)]
    raw_names = [b"raw:{" + os.urandom(16).hex().encode() + b"}" for _ in datas]
    got: dict[str, list] = {}

    def kvtier_put():
        assert remote.write_behind(chain) == len(chain) and remote.drain(60)

    def raw_put():
        pipe = raw.pipeline(transaction=False)
        for name, data in zip(raw_names, datas, strict=True):
            pipe.set(name, data)
        assert all(pipe.execute())

    def kvtier_get():
        got["kvtier"] = remote.fetch([b.key for b in chain], chain=True)

    def raw_get():
        pipe = raw.pipeline(transaction=False)
        for name in raw_names:
            pipe.get(name)
        got["raw"] = pipe.execute()

    for pair in ((("kvtier_put", kvtier_put), ("raw_put", raw_put)),
                 (("kvtier_get", kvtier_get), ("raw_get", raw_get))):
        for name, action in pair[:: 1 if turn % 2 else -1]:
            t0 = time.perf_counter()
            action()
            times[name].append(time.perf_counter() - t0)
    assert len(got["kvtier"]) == len(chain)
    assert all(b"".join(payload_parts(g.payload)) == d for g, d in zip(got["kvtier"], datas, strict=True))
    assert all(v is not None and len(v) == len(d) for v, d in zip(got["raw"], datas, strict=True))
    got.clear()

    pipe = raw.pipeline(transaction=False)  # keep the cluster's memory bounded
    for name in raw_names + [n for b in chain for n in remote_value.redis_keys(b.key)]:
        pipe.delete(name)
    pipe.execute()


def render(report: dict) -> str:
    head = (f"{'payload':>8} {'kvtier GET':>11} {'raw GET':>9} {'ratio':>6} "
            f"{'kvtier PUT':>11} {'raw PUT':>9} {'ratio':>6}")
    lines = [f"Redis {report['mode']}, {report['blocks']}-block pipelines, median of {report['reps']} "
             "turns, GB/s", head, "-" * len(head)]
    for name, r in report["results"].items():
        lines.append(f"{name:>8} {r['kvtier_get_gbps']:>11.2f} {r['raw_get_gbps']:>9.2f} "
                     f"{r['get_ratio']:>5.2f}x {r['kvtier_put_gbps']:>11.2f} {r['raw_put_gbps']:>9.2f} "
                     f"{r['put_ratio']:>5.2f}x")
    t = report["target"]
    lines.append(f"target: kvtier GET >= {t['get_ratio_at_least']}x raw at every size: "
                 + ("met" if t["met"] else "NOT met"))
    return "\n".join(lines)
