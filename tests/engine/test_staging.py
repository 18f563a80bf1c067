"""The staging ring on the CPU: what it copies, when it is full, how slots come back; and
the connector and the engine saving through it against a real ``kvtier serve``."""

from __future__ import annotations

import torch

from cacheserver.process import free_port
from engine.config import EngineConfig
from engine.model.kv_cache import KVCache, PageLayout
from engine.runtime.connector import CacheConnector, ConnectorConfig, SavedBlock
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams
from engine.runtime.staging import StagingRing
from hashing.keys import BlockHasher, Namespace
from tests.engine.tiny import tiny_checkpoint

LAYOUT = PageLayout(num_layers=2, block_size=4, num_kv_heads=2, head_dim=8, dtype=torch.bfloat16)
HASHER = BlockHasher(Namespace("staging-test", LAYOUT.name), 4)


def pool(num_blocks: int = 6) -> KVCache:
    cache = KVCache(LAYOUT, num_blocks)
    cache.kv.copy_(torch.randn(cache.kv.shape, generator=torch.Generator().manual_seed(0)))
    return cache


def page_bytes(cache: KVCache, block_id: int) -> bytes:
    return cache.kv[block_id].contiguous().view(torch.uint8).numpy().tobytes()


def saved_blocks(staged) -> list[SavedBlock]:
    keys = HASHER.keys(list(range(4 * len(staged))))
    return [SavedBlock(k, keys[i - 1] if i else HASHER.root, i, s.view, s)
            for i, (k, s) in enumerate(zip(keys, staged, strict=True))]


def test_staged_bytes_are_the_pages_and_stay_when_the_page_changes():
    cache = pool()
    ring = StagingRing(4, LAYOUT.nbytes, "cpu")
    want = [page_bytes(cache, b) for b in (3, 1, 4)]
    staged = ring.stage([cache.page(b) for b in (3, 1, 4)])
    cache.kv.zero_()  # the next step overwrites the pages: the slots keep what was staged
    for s, expected in zip(staged, want, strict=True):
        s.wait()
        assert s.view.nbytes == LAYOUT.nbytes == 2 * 2 * 4 * 2 * 8 * 2
        assert bytes(s.view) == expected
    assert len({s.slot for s in staged}) == 3


def test_a_full_ring_stages_the_leading_pages_only_and_released_slots_come_back():
    cache = pool()
    ring = StagingRing(2, LAYOUT.nbytes, "cpu")
    first = ring.stage([cache.page(b) for b in (0, 1, 2)])
    assert [bytes(s.view) for s in first] == [page_bytes(cache, 0), page_bytes(cache, 1)]
    assert ring.stage([cache.page(5)]) == []  # full: the caller drops (and counts) it
    first[1].release()
    [again] = ring.stage([cache.page(5)])
    assert again.slot == first[1].slot and bytes(again.view) == page_bytes(cache, 5)


def test_the_connector_puts_the_slot_view_and_releases_the_slot(served):
    cache = pool()
    ring = StagingRing(3, LAYOUT.nbytes, "cpu")
    staged = ring.stage([cache.page(b) for b in (2, 0, 5)])
    for s in staged:  # the payload is the slot itself: no copy of it
        assert torch.frombuffer(s.view, dtype=torch.uint8).data_ptr() == ring.host[s.slot].data_ptr()
    blocks = saved_blocks(staged)
    c = CacheConnector(ConnectorConfig(served.data_url))
    try:
        c.save(blocks)
        assert c.flush(10)
        assert c.stats.saved_blocks == 3 and c.stats.saved_bytes == 3 * LAYOUT.nbytes
        got = c.client.get([b.key for b in blocks])
        assert [bytes(g) for g in got] == [page_bytes(cache, b) for b in (2, 0, 5)]
        assert len(ring.stage([cache.page(b) for b in (1, 2, 3)])) == 3  # every slot came back
    finally:
        c.close()


def test_slots_come_back_when_the_put_fails():
    cache = pool()
    ring = StagingRing(2, LAYOUT.nbytes, "cpu")
    c = CacheConnector(ConnectorConfig(f"kvtier://127.0.0.1:{free_port()}", client_timeout_s=0.5))
    try:
        c.save(saved_blocks(ring.stage([cache.page(0), cache.page(1)])))
        assert c.flush(10)
        assert c.stats.save_failed == 2 and c.stats.saved_blocks == 0
        assert len(ring.stage([cache.page(2), cache.page(3)])) == 2
    finally:
        c.close()


def test_engine_drops_and_counts_what_its_full_ring_cannot_stage(black_hole):
    """Two staging slots, held by a saver stuck on a stalled service: of the five blocks a
    22-token prefill fills, the first two are staged, the other three dropped and counted."""
    connector = CacheConnector(ConnectorConfig(black_hole, fetch_timeout_s=0.1, client_timeout_s=3.0,
                                               save_queue_blocks=2))
    e = LLMEngine(EngineConfig(dtype="float32", block_size=4, num_blocks=24, max_num_batched_tokens=64),
                  tiny_checkpoint(), connector)
    try:
        out = e.generate([list(range(3, 25))], SamplingParams(temperature=0, max_tokens=1))[0]
        assert len(out.token_ids) == 1  # the request did not wait for the saves
        assert connector.stats.save_dropped == 3 and connector.stats.saved_blocks == 0
    finally:
        connector.close(timeout=0.1)
