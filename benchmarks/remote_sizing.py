"""Measurements behind the remote tier's layout (docs/remote.md), on a real local Redis
Cluster (3 primaries, no replicas) started here:

1. value sizing: ``MEMORY USAGE`` of one block's value kept whole against cut at a jemalloc
   size class (``tiers.remote_value.split_at``), at the payload sizes engines produce;
2. slot placement: a chain's blocks in one slot (hash tag = the chain's first block)
   against spread (each block its own tag): the time of one pipelined read of a chain,
   and how evenly bytes land on the primaries when many chains share a system prompt.

Throughput (GET and PUT against raw redis-py) is ``kvtier bench remote``
(``benchmarks.remote_bench``).

Run: ``.venv/bin/python -m benchmarks.remote_sizing [--out benchmarks/results/remote]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.redis_servers import RedisCluster
from tiers import remote_value
from tiers.base import make_block

KIB, MIB = 1 << 10, 1 << 20


def sizing(client) -> list[dict]:
    rows = []
    for payload in (64 * KIB, 360 * KIB, 1 * MIB, 2 * MIB, 4 * MIB):
        key = os.urandom(16)
        block = make_block(key, os.urandom(16), 0, os.urandom(payload))
        head, tail = remote_value.encode(block)
        whole = head + (tail or b"")  # the value uncut
        client.set(b"whole", whole)
        whole_usage = client.memory_usage(b"whole", samples=0)
        head_key, tail_key = remote_value.redis_keys(key)
        client.set(head_key, head)
        used = client.memory_usage(head_key, samples=0)
        if tail is not None:
            client.set(tail_key, tail)
            used += client.memory_usage(tail_key, samples=0)
        rows.append({"payload": payload, "value": len(whole), "whole_usage": whole_usage,
                     "whole_overhead_pct": round(100 * (whole_usage / payload - 1), 1),
                     "split": tail is not None, "stored_usage": used,
                     "stored_overhead_pct": round(100 * (used / payload - 1), 2)})
        for name in (b"whole", head_key, tail_key):
            client.delete(name)
    return rows


def placement(client, nodes: list, chains: int = 64, depth: int = 16, *, payload: int = 64 * KIB,
              reps: int = 15) -> dict:
    """Chains of ``depth`` blocks; half of them open with one of 4 shared system prompts."""
    data = os.urandom(payload)
    roots = [os.urandom(16) for _ in range(4)]
    layouts = {}
    for layout in ("spread", "one_slot_per_chain"):
        for n in nodes:
            n.cli("FLUSHALL")
        keys_of_chains = []
        for c in range(chains):
            first = roots[c % 4] if c % 2 == 0 else os.urandom(16)
            keys = [first] + [os.urandom(16) for _ in range(depth - 1)]
            tag = first.hex()
            names = [remote_value.redis_keys(k)[0] if layout == "spread"
                     else f"kvtier:{{{tag}}}:{k.hex()}".encode() for k in keys]
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.set(name, data)
            pipe.execute()
            keys_of_chains.append(names)
        used = [int(n.cli("INFO", "memory").split("used_memory:")[1].split()[0]) for n in nodes]
        times = []
        for _ in range(reps):
            for names in keys_of_chains[1::8]:  # the private chains
                t0 = time.perf_counter()
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.get(name)
                pipe.execute()
                times.append(time.perf_counter() - t0)
        layouts[layout] = {"chain_read_ms_median": round(1000 * statistics.median(times), 2),
                           "node_bytes_max_over_mean": round(max(used) / statistics.mean(used), 2)}
    return {"chains": chains, "depth": depth, "payload": payload, "shared_prompt_chains": chains // 2,
            **layouts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/remote")
    args = parser.parse_args()
    from redis.cluster import RedisCluster as ClusterClient

    with tempfile.TemporaryDirectory() as folder:
        cluster = RedisCluster(Path(folder), primaries=3, replicas=0)
        cluster.start()
        try:
            client = ClusterClient.from_url(cluster.urls[0])
            result = {"redis": cluster.nodes[0].cli("INFO", "server").split("redis_version:")[1].split()[0],
                      "sizing": sizing(client), "placement": placement(client, cluster.nodes),
                      "cpus": os.cpu_count()}
            client.close()
        finally:
            cluster.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "remote_sizing.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
