"""`kvtier bench engine` on a model shape, end to end on the CPU with a tiny shape."""

import json
from dataclasses import replace

import pytest

from benchmarks.engine_gpu import TARGETS
from clients.cli import build_parser
from engine.model.shapes import SHAPES

TINY_SHAPE = replace(SHAPES["llama3-8b"], vocab_size=512, hidden_size=64, intermediate_size=128,
                     num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, max_position=4096)
SMALL = ["--device", "cpu", "--model-shape", "test-tiny", "--dtype", "float32",
         "--prefill-lengths", "16,2048", "--cached-prefix", "32", "--new-tokens", "8", "--batches", "1,32",
         "--prompt-tokens", "6", "--decode-steps", "3", "--repeats", "1", "--matmul-size", "64",
         "--copy-mib", "1"]


def bench(monkeypatch, tmp_path, *extra: str) -> dict:
    monkeypatch.setitem(SHAPES, "test-tiny", TINY_SHAPE)
    path = tmp_path / "engine.json"
    args = build_parser().parse_args(["bench", "engine", *SMALL, "--json", str(path), *extra])
    assert args.func(args) == 0
    return json.loads(path.read_text())


def test_every_figure_beside_transformers_and_the_limits(monkeypatch, tmp_path):
    r = bench(monkeypatch, tmp_path)
    assert r["complete"] and r["hf_errors"] == {} and r["skipped"] == []
    assert r["model_shape"] == "test-tiny" and r["model_id"] == "random:test-tiny:seed0"
    assert r["device"] == "cpu" and r["dtype"] == "float32" and r["hf_attn_implementation"] == "sdpa"
    assert r["engine_config"]["device"] == "cpu" and r["engine_config"]["max_num_seqs"] == 32
    assert r["engine_config"]["cuda_graphs"] is True
    assert r["settings"]["batches"] == [1, 32] and r["settings"]["prefill_lengths"] == [16, 2048]
    for key in ("torch", "transformers", "device_name", "matmul_tflops", "copy_gbps", "num_parameters",
                "weight_bytes", "weight_bytes_per_token", "decode_limit_tps_b1", "seconds"):
        assert key in r, key
    # An untied embedding is read one row per token.
    assert r["weight_bytes"] - r["weight_bytes_per_token"] == 4 * 512 * 64
    assert r["decode_limit_tps_b1"] == pytest.approx(r["copy_gbps"] * 1e9 / r["weight_bytes_per_token"])
    for who in ("", "hf_"):
        for n in (16, 2048):
            assert r[f"{who}prefill_tps_{n}"] == pytest.approx(n / r[f"{who}prefill_s_{n}"])
        for key in ("cold_s", "cached_s", "decode_tps_b1", "decode_tps_b32"):
            assert r[who + key] > 0
    ratios = r["ratios"]
    assert ratios["prefill_vs_hf_2048"] == pytest.approx(r["prefill_tps_2048"] / r["hf_prefill_tps_2048"])
    assert ratios["prefill_vs_roofline_2048"] == pytest.approx(
        r["prefill_tps_2048"] / r["roofline_prefill_tps_2048"])
    assert ratios["cached_vs_hf"] == pytest.approx(r["cached_s"] / r["hf_cached_s"])
    assert ratios["cached_vs_cold"] == pytest.approx(r["cached_s"] / r["cold_s"])
    assert ratios["decode_b32_vs_b1"] == pytest.approx(r["decode_tps_b32"] / r["decode_tps_b1"])
    assert ratios["decode_b1_vs_limit"] == pytest.approx(r["decode_tps_b1"] / r["decode_limit_tps_b1"])
    assert ratios["hf_decode_b32_vs_b1"] == pytest.approx(r["hf_decode_tps_b32"] / r["hf_decode_tps_b1"])
    assert set(r["targets"]) == set(TARGETS)
    for name, (op, goal) in TARGETS.items():
        t = r["targets"][name]
        assert t["value"] == ratios[name] and t["target"] == f"{op} {goal}"
        assert t["met"] == (ratios[name] >= goal if op == ">=" else ratios[name] <= goal)


def test_no_figure_starts_after_max_seconds(monkeypatch, tmp_path):
    r = bench(monkeypatch, tmp_path, "--no-hf", "--max-seconds", "0")
    assert r["complete"] and "transformers" not in r
    assert r["skipped"] == ["prefill_s_16", "prefill_s_2048", "cold_s", "cached_s", "decode_tps_b1",
                            "decode_tps_b32"]
    assert set(r["ratios"]) == set() and all(t["value"] is None for t in r["targets"].values())


def test_hf_max_batch_leaves_transformers_out_of_larger_batches(monkeypatch, tmp_path):
    r = bench(monkeypatch, tmp_path, "--hf-max-batch", "8", "--prefill-lengths", "16", "--no-cuda-graphs")
    assert r["engine_config"]["cuda_graphs"] is False
    assert "hf_decode_tps_b1" in r and "hf_decode_tps_b32" not in r and r["decode_tps_b32"] > 0
    assert "decode_b32_vs_hf" not in r["ratios"] and r["targets"]["prefill_vs_hf_2048"]["value"] is None


def test_the_cpu_benchmark_stays_the_default_here(monkeypatch):
    args = build_parser().parse_args(["bench", "engine"])
    assert args.device == "auto" and args.model_shape is None
    bad = build_parser().parse_args(["bench", "engine", "--model-shape", "llama3-8b", "--model", "x.gguf"])
    with pytest.raises(ValueError, match="--model is for the CPU benchmark"):
        bad.func(bad)
    unknown = build_parser().parse_args(["bench", "engine", "--device", "cpu", "--model-shape", "llama-9000"])
    with pytest.raises(ValueError, match="llama3-8b"):
        unknown.func(unknown)


def test_a_figure_transformers_fails_is_recorded_and_ours_still_measured(monkeypatch, tmp_path):
    from benchmarks.hf_reference import Transformers

    def out_of_memory(self, batch):
        raise MemoryError(f"no room for {batch}")

    monkeypatch.setattr(Transformers, "decode_tps", out_of_memory)
    r = bench(monkeypatch, tmp_path, "--prefill-lengths", "16")
    assert r["hf_errors"] == {"decode_tps_b1": "MemoryError: no room for 1",
                              "decode_tps_b32": "MemoryError: no room for 32"}
    assert r["decode_tps_b32"] > 0 and "hf_decode_tps_b32" not in r and r["hf_prefill_tps_16"] > 0
