"""The engine with a real cache service: outputs never change, only where the prefix comes
from. Tiny float32 engines (block size 4) against a real ``kvtier serve`` subprocess."""

from __future__ import annotations

import signal

import httpx
import pytest

from clients.cache_client import CacheClient
from clients.sharded import ShardedCacheClient
from engine.config import EngineConfig
from engine.runtime.connector import CacheConnector, ConnectorConfig
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams
from tests.engine.tiny import tiny_checkpoint

GREEDY = SamplingParams(temperature=0, max_tokens=8, logprobs=0)
PROMPT = [5, 9, 13, 2, 77, 41, 8, 8, 30, 31, 32, 60, 61, 62, 3, 4, 50, 51, 52, 53, 11, 12]  # 22 tokens


def engine(url: str | None = None, **settings) -> LLMEngine:
    config = {"dtype": "float32", "block_size": 4, "num_blocks": 24, "max_num_seqs": 8,
              "max_num_batched_tokens": 64} | settings
    connector = CacheConnector(ConnectorConfig(url, fetch_timeout_s=5)) if url else None
    return LLMEngine(EngineConfig(**config), tiny_checkpoint(), connector)


def run(e: LLMEngine, prompt=PROMPT, salt: str = ""):
    out = e.generate([prompt], GREEDY, cache_salt=salt)[0]
    if e.connector is not None:
        assert e.connector.flush(10)
    return out


def logprobs(out) -> list[float]:
    return [lp[t] for lp, t in zip(out.logprobs, out.token_ids, strict=True)]


@pytest.fixture(scope="module")
def reference():
    return run(engine())


def assert_same(out, ref) -> None:
    assert out.token_ids == ref.token_ids
    assert logprobs(out) == pytest.approx(logprobs(ref), abs=1e-4)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_hits_from_dram_flash_and_the_local_pool_change_nothing(served, reference, transport):
    """Over ``unix://`` the DRAM hit is copied from the service's shared slab straight into
    the engine's pages: no payload byte crosses the socket."""
    url = served.unix_url if transport == "unix" else served.data_url
    first = engine(url)
    out = run(first)
    assert_same(out, reference)
    assert out.cached_tokens_by_source == {"local": 0}
    assert first.connector.stats.saved_blocks == (len(PROMPT) + 8 - 1) // 4  # prompt and reply

    fresh = engine(url)  # another engine process: only the service has the blocks
    out = run(fresh)
    assert_same(out, reference)
    assert out.cached_tokens_by_source == {"local": 0, "dram": 20}  # 5 full blocks before the last token
    assert out.num_cached_tokens == 20
    fetched, counters = fresh.connector.stats.fetched_bytes, fresh.connector.client.counters
    assert fetched == 5 * fresh.kv_cache.layout.nbytes
    assert counters.mapped_bytes == (fetched if transport == "unix" else 0)
    assert counters.stale_blocks == 0

    out = run(fresh)  # now its own pool has them
    assert_same(out, reference)
    assert out.cached_tokens_by_source == {"local": 20}

    served.restart()  # SIGTERM persists DRAM to flash; the new process starts with DRAM empty
    after = engine(url)
    out = run(after)
    assert_same(out, reference)
    assert out.cached_tokens_by_source == {"local": 0, "flash": 20}


def test_turn_two_reuses_turn_ones_prompt_and_reply(served):
    turn1 = run(engine(served.data_url))
    history = PROMPT + turn1.token_ids
    turn2_prompt = [*history, 70, 71, 72, 73, 74]
    reference = run(engine(), turn2_prompt)
    out = run(engine(served.data_url), turn2_prompt)
    assert_same(out, reference)
    # Every block of turn 1 whose K/V was computed (all but its last sampled token).
    assert out.cached_tokens_by_source["dram"] == (len(history) - 1) // 4 * 4
    assert out.num_cached_tokens > len(PROMPT)


def test_tenants_never_share_a_block(served):
    run(engine(served.data_url), salt="tenant-a")
    other = run(engine(served.data_url), salt="tenant-b")
    assert other.num_cached_tokens == 0
    same = run(engine(served.data_url), salt="tenant-a")
    assert same.num_cached_tokens == 20


def test_service_killed_mid_run_every_request_completes(served, reference):
    e = engine(served.data_url)
    prompts = [PROMPT, [*PROMPT[:15], 1, 2, 3, 4, 5, 6], [9] * 18, list(range(40, 60))]
    refs = engine().generate(prompts, GREEDY)
    ids = [e.add_request(p, GREEDY) for p in prompts]
    e.step()
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait()
    final = {}
    while len(final) < len(ids):
        for out in e.step():
            if out.finished:
                final[out.request_id] = out
    for request_id, ref in zip(ids, refs, strict=True):
        assert_same(final[request_id], ref)
    # And requests after the kill still work (the client fails fast and counts it).
    assert_same(run(e), reference)
    assert e.connector.client.counters.failures >= 1


def test_a_bad_block_from_the_service_is_recomputed(served, reference):
    keys = engine().hasher().keys(PROMPT)
    client = CacheClient(served.data_url)
    client.put([(keys[0], engine().hasher().root, 0, b"\x00" * 10)])  # not a page
    e = engine(served.data_url)
    out = run(e)
    assert_same(out, reference)
    assert out.num_cached_tokens == 0
    assert e.connector.stats.rejected_blocks == 1


def test_a_block_the_service_moves_before_it_is_copied_is_recomputed(served, reference):
    """The fetch located 5 blocks in the shared slab; the service frees the third before
    the engine copies them: the first two are used, the rest recomputed, the answer unchanged."""
    run(engine(served.data_url))
    e = engine(served.unix_url)
    request = e.add_request(PROMPT, GREEDY)
    e.connector.wait(5)  # the fetch completed; the engine has not taken its result yet
    assert e.connector.num_pending == 1 and not e._loads
    with CacheClient(served.data_url) as writer:
        assert writer.delete([e.hasher().keys(PROMPT)[2]]) == 1
    final = None
    while final is None:
        final = next((o for o in e.step() if o.request_id == request and o.finished), None)
    assert_same(final, reference)
    assert final.cached_tokens_by_source == {"local": 0, "dram": 8}
    assert e.connector.stats.moved_blocks == 1 and e.connector.client.counters.stale_blocks == 1


def test_a_secret_hash_seed_changes_every_key_but_not_the_output(served, reference):
    secret = {"block_hash": "sha256", "hash_secret": b"deployment-secret"}
    plain_keys = engine().hasher().keys(PROMPT)
    secret_keys = engine(**secret).hasher().keys(PROMPT)
    assert set(plain_keys).isdisjoint(secret_keys)
    run(engine(served.data_url, **secret))
    out = run(engine(served.data_url, **secret))  # replicas sharing the secret share blocks
    assert_same(out, reference)
    assert out.cached_tokens_by_source == {"local": 0, "dram": 20}
    assert run(engine(served.data_url)).num_cached_tokens == 0  # without it: nothing to hit


def test_replicas_sharding_over_two_services_share_their_prefixes(serve_factory, reference):
    """``--cache-url A,B``: each block of a prompt goes to the service the ring assigns it,
    and a second replica finds the whole prefix across them."""
    services = [serve_factory(), serve_factory()]
    urls = [s.data_url for s in services]
    assert_same(run(engine(",".join(urls))), reference)
    out = run(engine(",".join(urls)))
    assert_same(out, reference)
    assert out.cached_tokens_by_source == {"local": 0, "dram": 20}
    # The ports, and so the ring, differ from run to run: compare with the ring's own split
    # of the 7 saved blocks (prompt and reply, less the last token) rather than a fixed one.
    saved = engine().hasher().keys((PROMPT + reference.token_ids)[:-1])
    with ShardedCacheClient(urls) as sharded:
        owners = [sharded.owner(k) for k in saved]
        assert sharded.lookup(saved) == ["dram"] * len(saved)
    blocks = [httpx.get(s.rest_url + "/v1/stats").json()["blocks"] for s in services]
    assert len(saved) == 7 and blocks == [owners.count(url) for url in urls]
    for s, url in zip(services, urls, strict=True):
        mine = [k for k, owner in zip(saved, owners, strict=True) if owner == url]
        with CacheClient(s.data_url) as client:
            assert client.lookup(mine) == ["dram"] * len(mine)
