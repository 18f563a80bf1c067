"""The chat server's Prometheus metrics, named as vLLM names them where they apply
(``vllm:`` becomes ``kvtier:``), so existing dashboards carry over."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self, model_name: str):
        r = self.registry = CollectorRegistry()
        labels = ["model_name"]
        self.prompt_tokens = Counter("kvtier:prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter("kvtier:generation_tokens", "Tokens generated", labels, registry=r)
        self.prefix_cache_queries = Counter("kvtier:prefix_cache_queries",
                                            "Prompt tokens looked up in the prefix cache", labels, registry=r)
        self.prefix_cache_hits = Counter("kvtier:prefix_cache_hits",
                                         "Prompt tokens served by the prefix cache", labels, registry=r)
        self.ttft = Histogram("kvtier:time_to_first_token_seconds", "Time to first token", labels,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("kvtier:inter_token_latency_seconds", "Time between output tokens", labels,
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("kvtier:e2e_request_latency_seconds", "Request latency", labels,
                             buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("kvtier:request_success", "Finished requests", [*labels, "finished_reason"],
                                registry=r)
        self.running = Gauge("kvtier:num_requests_running", "Requests in the running batch", labels,
                             registry=r)
        self.waiting = Gauge("kvtier:num_requests_waiting", "Requests waiting to run", labels, registry=r)
        # The cache connector's counters (absent without a cache service), as gauges
        # mirroring its monotonic counts.
        self.connector = Gauge("kvtier:cache_service", "Cache connector counters (fetched_blocks, "
                               "fetch_timeouts, saved_blocks, save_dropped, ...)", [*labels, "counter"],
                               registry=r)
        self.model_name = model_name

    def finished(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int, reason: str,
                 e2e_s: float) -> None:
        m = self.model_name
        self.prompt_tokens.labels(m).inc(prompt_tokens)
        self.generation_tokens.labels(m).inc(completion_tokens)
        self.prefix_cache_queries.labels(m).inc(prompt_tokens)
        self.prefix_cache_hits.labels(m).inc(cached_tokens)
        self.requests.labels(m, reason or "abort").inc()
        self.e2e.labels(m).observe(e2e_s)

    def render(self, running: int, waiting: int, connector: dict | None = None) -> bytes:
        self.running.labels(self.model_name).set(running)
        self.waiting.labels(self.model_name).set(waiting)
        for name, value in (connector or {}).items():
            if isinstance(value, int):
                self.connector.labels(self.model_name, name).set(value)
        for tier, value in (connector or {}).get("hits_by_tier", {}).items():
            self.connector.labels(self.model_name, f"hit_blocks_{tier}").set(value)
        return generate_latest(self.registry)
