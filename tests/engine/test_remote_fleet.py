"""Engines on different "hosts" sharing prefixes through a real Redis Cluster: each host is
its own ``kvtier serve`` (own folder, no flash) with the cluster as its remote tier, and a
tiny float32 engine behind it. A primary is killed while the second host's engine serves:
every request answers, with exactly the tokens and logprobs of a cold run; after the
failover a third host finds every prefix again."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cacheserver.process import ServiceProcess
from tests.engine.test_cache_service_integration import GREEDY, assert_same, engine

PROMPTS = [[3 + i, 9, 13, 2, 77, 41, 8, 8, 30, 31, 32, 60, 61, 62, 3, 4, 50] for i in range(8)]  # 17 tokens
SAVED = (17 + 8 - 1) // 4  # full blocks of prompt and reply, per request


@pytest.fixture(scope="module")
def hosts(redis_cluster, tmp_path_factory):
    remote = ",".join(redis_cluster.urls[:2])
    made = [ServiceProcess(tmp_path_factory.mktemp(f"host{i}"),
                           {"dram_gb": 0.02, "flash_gb": 0, "remote": remote, "remote_timeout_ms": 300})
            for i in range(3)]
    with ThreadPoolExecutor(3) as pool:  # start and stop together: a service takes a second
        list(pool.map(ServiceProcess.start, made))
        yield made
        list(pool.map(ServiceProcess.stop, made))


def remote_stats(host: ServiceProcess) -> dict:
    return httpx.get(host.rest_url + "/v1/stats").json()["remote"]


def serve_all(host: ServiceProcess) -> list:
    """Each prompt once through a fresh engine behind ``host`` (its own pool starts empty)."""
    e = engine(host.data_url)
    outs = [e.generate([p], GREEDY)[0] for p in PROMPTS]
    assert e.connector.flush(10)
    return outs


def test_engines_share_prefixes_across_hosts_and_survive_a_primary_failover(hosts, redis_cluster):
    a, b, c = hosts
    cold = engine()
    reference = [cold.generate([p], GREEDY)[0] for p in PROMPTS]

    for out, ref in zip(serve_all(a), reference, strict=True):  # host A fills the shared tier
        assert_same(out, ref)
    deadline = time.monotonic() + 10
    while remote_stats(a)["writes"] < SAVED * len(PROMPTS):
        assert time.monotonic() < deadline, remote_stats(a)
        time.sleep(0.05)
    redis_cluster.wait_replicated()

    victim = next(n for n in redis_cluster.primary_nodes() if n.url not in redis_cluster.urls[:2])
    victim.kill()
    outs = serve_all(b)  # while the cluster fails over: some prefixes miss, none is wrong
    for out, ref in zip(outs, reference, strict=True):
        assert_same(out, ref)
    cached = [o.num_cached_tokens for o in outs]
    assert remote_stats(b)["errors"] > 0 and min(cached) < 16, cached  # the failover did bite

    deadline = time.monotonic() + 30
    while not redis_cluster.healthy():  # a replica took over the dead primary's slots
        assert time.monotonic() < deadline, "the cluster did not fail over"
        time.sleep(0.1)
    outs = serve_all(c)  # a third host, after the failover: every prefix from the shared tier
    for out, ref in zip(outs, reference, strict=True):
        assert_same(out, ref)
    assert [o.num_cached_tokens for o in outs] == [16] * len(PROMPTS)
    assert remote_stats(c)["corrupt"] == 0
