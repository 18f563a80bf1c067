"""The soak benchmark, short: 8 clients for 3 s against a 4 MiB DRAM tier."""

from __future__ import annotations

import argparse
import json

from benchmarks import soak


def test_short_soak_has_no_errors_no_corruption_and_bounded_memory(tmp_path):
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    out = tmp_path / "soak.json"
    args = parser.parse_args(["--clients", "8", "--seconds", "3", "--dram-mb", "4", "--json", str(out)])
    assert soak.run(args) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and [r["policy"] for r in report["runs"]] == ["default"]
    result = report["runs"][0]
    assert result["ok"] and result["errors"] == 0 and result["corrupt_blocks"] == 0
    assert result["requests"] > 100 and result["evictions"] > 0 and result["hits"] > 0
    assert result["rss_peak_mib"] <= result["rss_bound_mib"]
    assert sum(o["requests"] for o in result["ops"].values()) == result["requests"]
