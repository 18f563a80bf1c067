import argparse
import json
import math
import random

import pytest

from benchmarks import router
from benchmarks.fleet import Arrival, CostModel, FleetSpec, simulate
from benchmarks.placement import POLICIES, BoundedLoads
from benchmarks.replay import request_blocks
from benchmarks.synthetic import TENANT_PROMPT_BLOCKS, PrefixIds, tenant_chat

COST = CostModel(block_tokens=256, prefill_tps=20_000, decode_tps=30)


def arrivals(seed: int = 0, n: int = 600, speedup: float = 20.0) -> list[Arrival]:
    """A small tenant-chat workload, sped up so replicas hold several requests at once."""
    requests = tenant_chat(random.Random(seed), n, PrefixIds(), tenants=10)
    blocks = request_blocks(requests, 1)
    keys = [str(r.block_ids[TENANT_PROMPT_BLOCKS]) for r in requests]
    return [Arrival(r.timestamp_ms / 1000 / speedup, k, b, r.output_tokens)
            for r, k, b in zip(requests, keys, blocks, strict=True)]


FLEET = FleetSpec(replicas=4, cache_blocks=400)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_deterministic_for_a_seed(policy):
    a = simulate(arrivals(seed=1), policy, FLEET, COST)
    assert a == simulate(arrivals(seed=1), policy, FLEET, COST)
    assert a != simulate(arrivals(seed=2), policy, FLEET, COST)


def test_bounded_loads_never_place_above_the_bound():
    bounded = simulate(arrivals(), "bounded-load", FLEET, COST)
    plain = simulate(arrivals(), "consistent-hash", FLEET, COST)
    assert bounded["over_bound"] == 0
    assert plain["over_bound"] > 0  # the workload is skewed enough for the bound to matter
    assert bounded["max_over_mean_load"] < plain["max_over_mean_load"]


def test_bounded_loads_place_within_the_ring_capacity():
    """The policy itself, step by step: every placement lands at or below the cap."""
    policy, loads = BoundedLoads(4, epsilon=0.25), [0, 0, 0, 0]
    for i in range(40):
        node = policy.place("one hot key", loads)
        loads[node] += 1
        assert loads[node] <= math.ceil(1.25 * sum(loads) / 4)
        if i % 3 == 2:
            policy.release(node)
            loads[node] -= 1


def test_plain_hashing_keeps_each_conversation_on_one_replica():
    result = simulate(arrivals(), "consistent-hash", FLEET, COST)
    assert result["keys_split"] == 0
    assert simulate(arrivals(), "round-robin", FLEET, COST)["keys_split"] > 0.5


def test_round_robin_spreads_requests_evenly():
    result = simulate(arrivals(n=600), "round-robin", FLEET, COST)
    assert result["request_share_max_over_mean"] == 1.0  # 600 requests, 150 each


def test_affinity_raises_the_hit_rate():
    hit = {p: simulate(arrivals(), p, FLEET, COST)["hit_rate"] for p in POLICIES}
    assert hit["consistent-hash"] > hit["round-robin"]
    assert hit["bounded-load"] > hit["round-robin"]


def test_a_request_larger_than_a_replica_cache_says_how_to_fix():
    with pytest.raises(ValueError, match="more cache"):
        simulate(arrivals(n=50), "round-robin", FleetSpec(replicas=2, cache_blocks=3), COST)


def test_mooncake_keys_skip_the_shared_first_block(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 0, "input_length": 1100, "hash_ids": [0, 5, 6]}\n'
                     '{"timestamp": 1, "input_length": 700, "hash_ids": [0, 9]}\n'
                     '{"timestamp": 2, "input_length": 100, "hash_ids": [0]}\n')
    assert router.mooncake_keys(trace, 1) == ["5", "9", "0"]  # block 1 is partial in the second
    assert router.mooncake_keys(trace, 0) == ["0", "0", "0"]


def test_the_benchmark_writes_json_with_every_policy(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    router.add_arguments(parser)
    args = parser.parse_args(["--workload", "tenant-chat", "--replicas", "4", "--requests", "300",
                              "--tenants", "5", "--cache", "0.2", "--workers", "1",
                              "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    assert router.run(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(r["policy"], r["shared_remote"]) for r in report["results"]] == \
        [(p, False) for p in POLICIES] + [(p, True) for p in POLICIES]
    assert all({"hit_rate", "max_over_mean_load", "remote_hit_share"} <= set(r) for r in report["results"])
    assert {t["check"] for t in report["targets"]} == {"hit rate vs consistent hashing", "max/mean load"}
    assert (tmp_path / "r.png").stat().st_size > 0
    assert "targets" in capsys.readouterr().out


REMOTE = CostModel(block_tokens=256, prefill_tps=20_000, decode_tps=30, block_bytes=1 << 20, remote_bps=1e9)
SHARED = FleetSpec(replicas=4, cache_blocks=400, remote_blocks=100_000)


def test_a_shared_remote_tier_lifts_round_robin_towards_the_unlimited_rate():
    from benchmarks.traces import unlimited_hit_rate

    isolated = simulate(arrivals(), "round-robin", FLEET, REMOTE)
    shared = simulate(arrivals(), "round-robin", SHARED, REMOTE)
    requests = tenant_chat(random.Random(0), 600, PrefixIds(), tenants=10)
    assert isolated["remote_hit_blocks"] == 0
    assert shared["hit_rate"] > isolated["hit_rate"]
    assert shared["remote_hit_share"] > 0
    assert shared["hit_rate"] <= unlimited_hit_rate(requests) + 1e-9


def test_remote_hits_cost_their_transfer_time():
    """Each remote hit costs block bytes / bandwidth in the replica's prefill slot."""
    fast = simulate(arrivals(), "bounded-load", SHARED, REMOTE)
    slow_cost = CostModel(256, 20_000, 30, block_bytes=1 << 20, remote_bps=1e8)
    slow = simulate(arrivals(), "bounded-load", SHARED, slow_cost)
    assert fast["remote_hit_blocks"] > 0 and slow["remote_hit_blocks"] > 0
    assert fast["remote_load_s"] == pytest.approx(fast["remote_hit_blocks"] * (1 << 20) / 1e9)
    assert slow["remote_load_s"] == pytest.approx(slow["remote_hit_blocks"] * (1 << 20) / 1e8)
    assert slow["mean_ttft_s"] > fast["mean_ttft_s"]


def test_a_remote_tier_without_a_bandwidth_is_refused():
    with pytest.raises(ValueError, match="bandwidth"):
        simulate(arrivals(n=100), "round-robin", SHARED, COST)
