"""``kvtier bench plugins``, small: tiny pages and blocks (4 tokens, 2 layers, 2 heads, 8
wide, bf16: 512 B per SGLang page and per vLLM block), 3 per call, 2 turns."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import plugins
from benchmarks.plugins_vllm import VLLMPath

TURNS, TINY_BYTES = 2, 512


def _run(tmp_path, *extra: str) -> dict:
    parser = argparse.ArgumentParser()
    plugins.add_arguments(parser)
    out = tmp_path / "plugins.json"
    args = parser.parse_args(["--tiny", "--pages", "3", "--blocks", "3", "--reps", str(TURNS),
                              "--json", str(out), *extra])
    assert plugins.run(args) == 0
    return json.loads(out.read_text())


def test_every_path_moves_and_checks_the_same_bytes_as_raw_and_memcpy(tmp_path):
    report = _run(tmp_path)
    assert report["reps"] == TURNS
    results = {(r["engine"], r["transport"]): r for r in report["results"]}
    assert list(results) == [("sglang", "unix"), ("sglang", "tcp"), ("vllm", "unix"), ("vllm", "tcp")]
    for (_, transport), r in results.items():
        assert r["bytes"] == 3 * TINY_BYTES
        assert r["checked_turns"] == TURNS + 1  # every target compared byte for byte, warm-up too
        for move in (*plugins.MOVES, "memcpy"):
            low, high = r["gbps_range"][move]
            assert 0 < low <= r[f"{move}_gbps"] <= high
        for op in ("save", "load"):  # the ratios are the medians' quotients (tiny ones round to 0)
            assert r[f"{op}_vs_raw"] == pytest.approx(r[f"plugin_{op}_gbps"] / r[f"raw_{op}_gbps"], abs=0.01)
            assert r[f"{op}_vs_memcpy"] == pytest.approx(r[f"plugin_{op}_gbps"] / r["memcpy_gbps"], abs=0.01)
        c = r["counters"]
        assert c["plugin_failures"] == 0 and c["raw_failures"] == 0
        # unix://: both loads copied every byte out of the service's shared DRAM; TCP: none
        mapped = (TURNS + 1) * r["bytes"] if transport == "unix" else 0
        assert c["plugin_mapped_bytes"] == mapped and c["raw_mapped_bytes"] == mapped
    assert "sglang unix" in plugins.render(report)


def test_a_load_that_lands_wrong_bytes_fails_the_run(tmp_path, monkeypatch):
    def load_nothing(path):
        path.raw.get_into(path.raw_keys, [memoryview(row) for row in path.copy_target])

    monkeypatch.setattr(VLLMPath, "raw_load", load_nothing)
    with pytest.raises(AssertionError, match="raw load: wrong bytes"):
        _run(tmp_path, "--engines", "vllm")
