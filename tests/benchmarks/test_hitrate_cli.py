"""``kvtier bench hitrate`` end to end: the command, its JSON report and its plots."""

import json

import pytest

from benchmarks.belady import belady_hit_rate, oracle_admission_hit_rate
from benchmarks.synthetic import generate
from benchmarks.traces import distinct_blocks, unlimited_hit_rate
from clients.cli import main


def test_report_has_every_policy_capacity_and_bound(tmp_path, capsys):
    report_path, plot = tmp_path / "chat.json", tmp_path / "chat.png"
    assert main(["bench", "hitrate", "--trace", "synthetic:chat", "--requests", "300",
                 "--capacity", "0.1", "0.3", "--policy", "lru", "default", "--workers", "1",
                 "--json", str(report_path), "--plot", str(plot)]) == 0
    report = json.loads(report_path.read_text())
    cells = {(r["policy"], r["capacity_fraction"]) for r in report["results"]}
    assert cells == {(p, f) for p in ("lru", "default") for f in (0.1, 0.3)}
    requests = generate("chat", num_requests=300)
    assert report["unlimited_hit_rate"] == unlimited_hit_rate(requests)
    for key, bound in (("belady", belady_hit_rate), ("oracle_admission", oracle_admission_hit_rate)):
        rows = report[key]
        assert [r["capacity_fraction"] for r in rows] == [0.1, 0.3]
        for r in rows:
            capacity = round(r["capacity_fraction"] * distinct_blocks(requests))
            assert r["hit_rate"] == pytest.approx(bound(requests, capacity))
    assert plot.stat().st_size > 0 and (tmp_path / "chat-tiers.png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "lru+admit" in table and "belady" in table


def test_an_unknown_workload_is_a_clear_error(capsys):
    assert main(["bench", "hitrate", "--trace", "synthetic:nope", "--workers", "1"]) != 0
    err = capsys.readouterr().err
    assert "'nope' is unknown" in err and "Traceback" not in err


def test_memory_is_measured_per_replay_when_asked(tmp_path, capsys):
    report_path = tmp_path / "agent.json"
    assert main(["bench", "hitrate", "--trace", "synthetic:agent", "--requests", "200",
                 "--capacity", "0.5", "--policy", "lru", "adaptive", "--workers", "1", "--memory",
                 "--json", str(report_path)]) == 0
    peak = {r["policy"]: r["peak_bytes_per_block"] for r in json.loads(report_path.read_text())["results"]}
    assert 0 < peak["lru"] < peak["adaptive"]  # five shadow caches and their histories cost memory
    assert "peak memory" in capsys.readouterr().out
