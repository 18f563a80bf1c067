"""kvtier's vLLM connector against the real vLLM 0.34.0 scheduler and a real ``kvtier serve``.

Each replica is a real ``Scheduler`` with the connector loaded by module path through
``KVTransferConfig``, plus a worker-side connector over KV tensors that vLLM's own
``allocate_kv_cache`` lays out on the CPU. The model never runs: the test stands in for
the forward pass by filling the pages with random K/V and by sampling fixed tokens.

Sizes: block size 4, 2 layers, 2 KV heads, head size 8, 16 blocks. Replica 1 serves a
10-token prompt and 2 more tokens; the service then holds its 3 full blocks.
"""

from __future__ import annotations

import logging
import pickle

import httpx
import pytest
import torch
import vllm
from vllm import SamplingParams
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_layout import KVCacheLayout
from vllm.v1.outputs import KVConnectorOutput, ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager
from vllm.v1.worker.utils import allocate_kv_cache

from benchmarks.plugins_vllm import BlockShape, kv_cache_config, tiny_llama, vllm_config
from clients.vllm_connector import KvtierConnector

BLOCK_SIZE, NUM_BLOCKS = 4, 16
SHAPE = BlockShape(block_size=BLOCK_SIZE, layers=2, heads=2, head_size=8, dtype=torch.float32)
LAYERS = SHAPE.layer_names
PROMPT = [101, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # 2 full blocks and 2 tokens
SAMPLED = [20, 21, 22]  # replica 1's output: its KV fills block 2 (tokens 8..11)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    init_none_hash(sha256)
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), SHAPE, 128)


class Replica:
    """One vLLM engine replica: a real scheduler and one worker's connector and KV pages."""

    def __init__(self, model_dir: str, url: str, layout: KVCacheLayout, device: str):
        self.config = _vllm_config(model_dir, url, extra={"timeout_s": 0.5})
        self.config.cache_config.num_gpu_blocks = NUM_BLOCKS
        cache_layout = kv_config(layout)
        self.scheduler = Scheduler(self.config, cache_layout, StructuredOutputManager(self.config),
                                   block_size=BLOCK_SIZE)
        self.connector: KvtierConnector = self.scheduler.connector
        self.worker = KvtierConnector(self.config, KVConnectorRole.WORKER, cache_layout)
        # kv[layer]: [NUM_BLOCKS, heads, BLOCK_SIZE, K+V] views, strided as ``layout`` says
        kv_caches = allocate_kv_cache(cache_layout, torch.device("cpu"), layout)
        if device != "cpu":  # dense [NUM_BLOCKS, heads, BLOCK_SIZE, K+V] copies on the device
            kv_caches = {name: kv.to(device) for name, kv in kv_caches.items()}
        self.worker.register_kv_caches(kv_caches)
        self.kv = [kv_caches[name] for name in LAYERS]

    def add(self, req_id: str, tokens: list[int], max_tokens: int, cache_salt: str | None = None) -> Request:
        params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
        request = Request(req_id, tokens, params, None, cache_salt=cache_salt,
                          block_hasher=get_request_block_hasher(BLOCK_SIZE, sha256))
        self.scheduler.add_request(request)
        return request

    def step(self, sampled: int):
        """One engine step: schedule, load, "forward" (random K/V into the scheduled
        tokens' pages), save, sample ``sampled`` for every running request."""
        out = self.scheduler.schedule()
        meta = out.kv_connector_metadata
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(None)
        for req_id, n in out.num_scheduled_tokens.items():
            request = self.scheduler.requests[req_id]
            blocks = self.scheduler.kv_cache_manager.get_block_ids(req_id)[0]
            done = request.num_computed_tokens  # the scheduler has counted this step's tokens already
            for pos in range(done - n, done):
                for kv in self.kv:
                    kv[blocks[pos // BLOCK_SIZE], :, pos % BLOCK_SIZE] = torch.randn(kv.shape[1], kv.shape[3],
                                                                                     device=kv.device)
        self.worker.wait_for_save()
        failed = self.worker.get_block_ids_with_load_errors()
        self.worker.clear_connector_metadata()
        req_ids = list(out.num_scheduled_tokens)
        self.scheduler.update_from_output(out, ModelRunnerOutput(
            req_ids=req_ids,
            sampled_token_ids=[[sampled]] * len(req_ids),
            kv_connector_output=KVConnectorOutput(invalid_block_ids=failed)))
        return out, meta

    def pages(self, block_ids: list[int]) -> torch.Tensor:
        """[blocks, layers, heads, BLOCK_SIZE, K+V]: what the pages hold."""
        return torch.stack([kv[block_ids] for kv in self.kv], dim=1)

    def close(self) -> None:
        if self.kv:
            self.worker.shutdown()
            self.connector.shutdown()
            self.kv = []


def kv_config(layout: KVCacheLayout):
    return kv_cache_config(SHAPE, NUM_BLOCKS, layout)


@pytest.fixture
def replicas(model_dir):
    made: list[Replica] = []

    def make(url: str, layout: KVCacheLayout = KVCacheLayout.LBHNC, device: str = "cpu") -> Replica:
        made.append(Replica(model_dir, url, layout, device))
        return made[-1]

    yield make
    for replica in made:
        replica.close()


def _serve_first_request(replica: Replica) -> torch.Tensor:
    """Replica 1 prefills PROMPT and decodes SAMPLED; returns the pages of the 3 blocks it
    saved ([3, layers, heads, BLOCK_SIZE, K+V], on the host) once the service has them."""
    request = replica.add("r1", PROMPT, max_tokens=len(SAMPLED))
    runs = []
    for token in SAMPLED:
        _, meta = replica.step(token)
        runs += meta.saves
    assert list(request.all_token_ids) == PROMPT + SAMPLED
    assert [(run.first, run.end) for run in runs] == [(0, 2), (2, 3)]  # block 2 once token 11 exists
    assert replica.worker.worker.flush()
    return replica.pages([i for run in runs for i in run.block_ids]).cpu()


def test_second_replica_loads_what_the_first_saved(served, replicas):
    first = replicas(served.unix_url)
    saved = _serve_first_request(first)
    assert first.worker.stats.queued_blocks == 3 and first.worker.worker.saver.stats.saved_blocks == 3

    # Another replica, other physical layout (blocks outermost), over TCP: same prefix + 3 tokens.
    second = replicas(served.data_url, KVCacheLayout.BLHNC)
    r2 = second.add("r2", PROMPT + SAMPLED[:2] + [30, 31, 32], max_tokens=1)
    # Asked again and again within a step (as vLLM may): one lookup, the same answer.
    assert [second.connector.get_num_new_matched_tokens(r2, 0) for _ in range(2)] == [(12, False)] * 2
    out, meta = second.step(40)
    new = out.scheduled_new_reqs[0]
    assert new.num_computed_tokens == 12 and out.num_scheduled_tokens["r2"] == 3
    assert [(run.first, run.end) for run in meta.loads] == [(0, 3)]
    assert pickle.loads(pickle.dumps(meta)) == meta  # vLLM pickles it to the worker processes
    loaded_ids = meta.loads[0].block_ids
    assert loaded_ids == new.block_ids[0][:3]
    assert torch.equal(second.pages(loaded_ids), saved)  # bit for bit
    assert second.worker.stats.loaded_blocks == 3 and second.worker.stats.loaded_bytes == saved.numel() * 4
    s = second.connector.stats
    assert (s.lookups, s.looked_up_blocks, s.hit_blocks, s.matched_tokens) == (1, 3, 3, 12)

    # The service saw an ordinary client: 3 puts, 3 hits, one lookup per replica.
    stats = served.stats()
    assert (stats["puts"], stats["hits"], stats["data_plane"]["requests"]["LOOKUP"]) == (3, 3, 2)

    # Another tenant (vLLM's cache_salt) with the same tokens hits nothing, here or in the service.
    second.add("r3", PROMPT + SAMPLED[:2] + [30, 31, 32], max_tokens=1, cache_salt="tenant-b")
    out, meta = second.step(41)
    assert out.scheduled_new_reqs[0].num_computed_tokens == 0 and meta.loads == []
    assert second.connector.stats.hit_blocks == 3


def test_full_prompt_hit_leaves_one_token_to_compute(served, replicas):
    saved = _serve_first_request(replicas(served.unix_url))
    second = replicas(served.unix_url)
    second.add("r2", PROMPT + SAMPLED[:2], max_tokens=1)  # exactly the 3 cached blocks
    out, meta = second.step(40)
    assert out.scheduled_new_reqs[0].num_computed_tokens == 11 and out.num_scheduled_tokens["r2"] == 1
    assert [(run.first, run.end) for run in meta.loads] == [(0, 3)]  # the last block loads whole
    loaded = second.pages(meta.loads[0].block_ids)  # [3, layers, heads, BLOCK_SIZE, K+V]
    # All loaded; the "forward" then rewrote token 11's slot (vLLM recomputes it there).
    assert torch.equal(loaded[:2], saved[:2]) and torch.equal(loaded[2, :, :, :3], saved[2, :, :, :3])
    assert second.connector.stats.full_prompt_hits == 1
    assert "r2" not in second.scheduler.requests  # it ran its one token and finished


def test_blocks_lost_after_the_lookup_are_recomputed(served, replicas):
    _serve_first_request(replicas(served.unix_url))
    second = replicas(served.unix_url)
    r2 = second.add("r2", PROMPT + SAMPLED[:2] + [30], max_tokens=2)
    assert second.connector.get_num_new_matched_tokens(r2, 0) == (12, False)  # this step's answer
    assert httpx.post(served.rest_url + "/v1/flush", json={}).json()["flushed"] == 3
    out, meta = second.step(40)  # plans the load on the step's answer; the service has nothing now
    assert out.num_scheduled_tokens["r2"] == 1 and [(r.first, r.end) for r in meta.loads] == [(0, 3)]
    assert second.worker.stats.load_failures == 3
    assert r2.num_computed_tokens == 0 and r2.status == RequestStatus.RUNNING  # vLLM recomputes it all
    out, meta = second.step(41)
    assert out.num_scheduled_tokens["r2"] == 13 and meta.loads == []
    second.step(42)
    assert r2.status == RequestStatus.FINISHED_LENGTH_CAPPED


def test_dead_service_matches_nothing_and_fails_nothing(tmp_path, replicas, caplog):
    caplog.set_level(logging.INFO, "vllm.kvtier")
    replica = replicas(f"unix://{tmp_path}/no-such.sock")
    replica.add("r1", PROMPT, max_tokens=2)
    out, meta = replica.step(20)
    assert out.scheduled_new_reqs[0].num_computed_tokens == 0 and out.num_scheduled_tokens["r1"] == 10
    assert meta.loads == [] and [(run.first, run.end) for run in meta.saves] == [(0, 2)]
    replica.step(21)
    assert replica.worker.worker.flush()
    assert replica.connector.client.counters.failures >= 1
    assert replica.worker.worker.saver.stats.save_failed == 2
    replica.close()
    assert any("kvtier connector (worker)" in r.getMessage() and "save_failed" in r.getMessage()
               for r in caplog.records)


@pytest.mark.gpu
def test_cuda_pages_round_trip_through_host_staging(served, replicas):
    saved = _serve_first_request(replicas(served.unix_url, device="cuda"))
    second = replicas(served.unix_url, device="cuda")
    second.add("r2", PROMPT + SAMPLED[:2] + [30], max_tokens=1)
    _, meta = second.step(40)
    assert [(run.first, run.end) for run in meta.loads] == [(0, 3)]
    assert torch.equal(second.pages(meta.loads[0].block_ids).cpu(), saved)


def test_refuses_settings_that_would_fail_requests(model_dir, served, monkeypatch):
    with pytest.raises(ValueError, match="kv_load_failure_policy"):
        _connector(model_dir, served.data_url, policy="fail")
    with pytest.raises(ValueError, match="unknown kv_connector_extra_config keys"):
        _connector(model_dir, served.data_url, extra={"urll": "x"})
    monkeypatch.setattr(vllm, "__version__", "0.35.0")
    with pytest.raises(ValueError, match=r"tested with vLLM 0\.34\.0, running 0\.35\.0"):
        _connector(model_dir, served.data_url)
    assert _connector(model_dir, served.data_url, extra={"allow_untested_vllm": True}).stats.lookups == 0


def _connector(model_dir: str, url: str, **settings) -> KvtierConnector:
    config = _vllm_config(model_dir, url, **settings)
    return KvtierConnector(config, KVConnectorRole.SCHEDULER, kv_config(KVCacheLayout.LBHNC))


def _vllm_config(model_dir: str, url: str, policy: str = "recompute", extra: dict | None = None):
    return vllm_config(model_dir, url, SHAPE, 64, max_num_seqs=4, policy=policy, extra=extra)
