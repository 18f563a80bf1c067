"""``kvtier bench remote``, small: a real 3-primary Redis Cluster, tiny payloads (one cut at
a jemalloc class, one kept whole), a few turns."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import remote_bench
from benchmarks.dataplane import ensure_redis_server


def test_bench_remote_measures_both_clients_on_one_cluster_and_writes_ratios(tmp_path):
    try:
        ensure_redis_server()
    except Exception as e:  # no redis-server and no way to install it
        pytest.skip(f"no redis-server: {e}")
    parser = argparse.ArgumentParser()
    remote_bench.add_arguments(parser)
    out = tmp_path / "bench-remote.json"
    # 64 KiB + 60 B is cut at the 64 KiB class; 20,000 B is kept whole.
    args = parser.parse_args(["--sizes", "65536,20000", "--blocks", "4", "--reps", "2", "--json", str(out)])
    assert remote_bench.run(args) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "cluster" and report["started_cluster"]
    assert set(report["results"]) == {"65536", "20000"}
    for r in report["results"].values():
        gbps = [r[f"{who}_{op}_gbps"] for who in ("kvtier", "raw") for op in ("get", "put")]
        assert min(gbps) > 0 and r["get_ratio"] > 0 and r["put_ratio"] > 0
    assert report["target"]["get_ratio_at_least"] == 0.8
    assert report["target"]["met"] == all(r["get_ratio"] >= 0.8 for r in report["results"].values())
