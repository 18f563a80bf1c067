"""An engine whose cache service is slow (``kvtier serve --inject-delay-ms``): every
request still completes, with the output it has without a cache, because the connector
stops waiting for the prefix at its deadline and recomputes."""

from __future__ import annotations

import httpx

from engine.config import EngineConfig
from engine.runtime.connector import CacheConnector, ConnectorConfig
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams
from tests.engine.tiny import tiny_checkpoint

GREEDY = SamplingParams(temperature=0, max_tokens=8, logprobs=0)
PROMPT = [5, 9, 13, 2, 77, 41, 8, 8, 30, 31, 32, 60, 61, 62, 3, 4, 50, 51, 52, 53, 11, 12]


def engine(connector: CacheConnector | None) -> LLMEngine:
    config = EngineConfig(dtype="float32", block_size=4, num_blocks=24, max_num_seqs=8,
                          max_num_batched_tokens=64)
    return LLMEngine(config, tiny_checkpoint(), connector)


def test_a_slow_service_costs_a_recompute_not_a_failed_request(serve_factory):
    served = serve_factory(inject_delay_ms=400)
    reference = engine(None).generate([PROMPT], GREEDY)[0]
    connector = CacheConnector(ConnectorConfig(served.data_url, fetch_timeout_s=0.1, client_timeout_s=0.2))
    slow = engine(connector)
    for _ in range(3):
        out = slow.generate([PROMPT], GREEDY)[0]
        assert out.token_ids == reference.token_ids
        assert set(out.cached_tokens_by_source) == {"local"}  # nothing came from the slow service
    assert connector.stats.fetch_timeouts + connector.client.counters.timeouts >= 1
    assert httpx.get(served.rest_url + "/v1/stats").json()["data_plane"]["injected_delays"] >= 1
