"""Two real ``kvtier serve`` processes with their own folders (two "hosts") sharing prefixes
through a real Redis Cluster (3 primaries, 3 replicas) on loopback: a hit behind the other
service, a primary killed mid-run, a value corrupted in Redis, and the settings."""

from __future__ import annotations

import time

import httpx
import pytest
from redis.cluster import RedisCluster as ClusterClient

from cacheserver.config import load
from cacheserver.process import ServiceProcess
from clients.cache_client import CacheClient
from tiers import remote_value

from .blocks import chain, keys_of

SIZE = 4096


@pytest.fixture(scope="module")
def services(redis_cluster, tmp_path_factory):
    remote = ",".join(redis_cluster.urls[:2])
    made = [ServiceProcess(tmp_path_factory.mktemp(f"host{i}"),
                           {"dram_gb": 0.05, "flash_gb": 0, "remote": remote, "remote_timeout_ms": 300})
            .start() for i in range(2)]
    yield made
    for s in made:
        s.stop()


def remote_stats(service: ServiceProcess) -> dict:
    return httpx.get(service.rest_url + "/v1/stats").json()["remote"]


def wait_written(service: ServiceProcess, blocks: int) -> None:
    deadline = time.monotonic() + 10
    while remote_stats(service)["writes"] < blocks:
        assert time.monotonic() < deadline, remote_stats(service)
        time.sleep(0.05)


def test_a_prefix_saved_behind_one_service_is_a_hit_behind_another(services):
    a, b = services
    blocks = chain("fleet", 8, SIZE)
    with CacheClient(a.data_url) as ca, CacheClient(b.data_url) as cb:
        before = remote_stats(a)["writes"]
        assert ca.put(blocks) == 8
        wait_written(a, before + 8)
        assert cb.lookup(keys_of(blocks)) == ["dram"] * 8
        assert [bytes(p) for p in cb.get(keys_of(blocks))] == [b[3] for b in blocks]
    stats = remote_stats(b)
    assert stats["mode"] == "cluster" and stats["hits"] >= 8 and stats["corrupt"] == 0
    metrics = httpx.get(b.rest_url + "/metrics").text
    assert "kvtier_remote_hits_total" in metrics and "kvtier_store_remote_promotions_total" in metrics


def test_a_value_corrupted_in_redis_is_refused_and_counted(services, redis_cluster):
    a, b = services
    blocks = chain("corrupt", 3, SIZE)
    with CacheClient(a.data_url) as ca, CacheClient(b.data_url) as cb:
        before = remote_stats(a)["writes"]
        ca.put(blocks)
        wait_written(a, before + 3)
        raw = ClusterClient.from_url(redis_cluster.urls[0])
        head, _ = remote_value.redis_keys(blocks[1][0])
        value = raw.get(head)
        raw.set(head, value[:-1] + bytes([value[-1] ^ 0xFF]))
        corrupt = remote_stats(b)["corrupt"]
        assert cb.lookup(keys_of(blocks)) == ["dram"]  # stops at the refused block
        assert remote_stats(b)["corrupt"] == corrupt + 1
        assert raw.exists(head) == 0
        raw.close()


def test_a_primary_killed_mid_run_gives_misses_then_hits_and_never_a_wrong_block(services, redis_cluster):
    a, b = services
    prompts = [chain(f"failover{i}", 4, SIZE) for i in range(12)]
    with CacheClient(a.data_url) as ca:
        before = remote_stats(a)["writes"]
        for blocks in prompts:
            ca.put(blocks)
        wait_written(a, before + 48)
    redis_cluster.wait_replicated()
    victim = next(n for n in redis_cluster.primary_nodes() if n.url not in redis_cluster.urls[:2])
    victim.kill()
    wrong = failed = partial = 0
    full = []
    deadline = time.monotonic() + 30
    with CacheClient(b.data_url) as cb:
        for blocks in prompts:  # each prompt read once: misses while the cluster fails over, then hits
            while True:
                try:
                    found = len(cb.lookup(keys_of(blocks)))
                    got = cb.get(keys_of(blocks[:found]))
                except Exception:  # a failed request is what this test counts
                    failed += 1
                    found, got = 0, []
                wrong += sum(g is not None and bytes(g) != blk[3]
                             for g, blk in zip(got, blocks, strict=False))
                if found == 4 or time.monotonic() > deadline:
                    break
                partial += 1
                time.sleep(0.2)
            full.append(found == 4)
    assert (wrong, failed) == (0, 0)
    assert all(full), full  # after the failover every prompt is whole again (the replica had it)
    assert partial > 0  # the failover did happen mid-run: some reads missed meanwhile


def test_remote_settings_from_flags_env_and_file(tmp_path):
    f = tmp_path / "kvtier.toml"
    f.write_text('remote = "redis://10.0.0.1:6379"\nremote_ttl_s = 600\n')
    c = load({}, {"KVTIER_REMOTE": "rediss://kv:secret@cache.example:6380"}, str(f))
    assert c.remote_settings().urls == ("rediss://kv:secret@cache.example:6380",)
    assert c.remote_settings().ttl_s == 600
    assert c.public()["remote"] == "rediss://kv:***@cache.example:6380"
    urls = load({"remote": "redis://a:1,redis://b:2"}, {}).remote_settings().urls
    assert urls == ("redis://a:1", "redis://b:2")
    with pytest.raises(ValueError, match="redis://"):
        load({"remote": "cache.example:6379"}, {})


def test_a_service_starts_while_its_remote_store_is_down(tmp_path):
    s = ServiceProcess(tmp_path, {"dram_gb": 0.01, "flash_gb": 0, "remote": "redis://127.0.0.1:1",
                                  "remote_timeout_ms": 100}).start()
    try:
        with CacheClient(s.data_url) as c:
            blocks = chain("nowhere", 2, SIZE)
            assert c.put(blocks) == 2
            assert c.lookup(keys_of(chain("absent", 2, SIZE))) == []
            assert c.lookup(keys_of(blocks)) == ["dram", "dram"]
        stats = remote_stats(s)
        assert stats["errors"] >= 2 and stats["hits"] == 0
    finally:
        s.stop()
