"""The router: an OpenAI-compatible proxy that sends a conversation to the replica whose
prefix cache is warm for it.

``Router`` owns the replica set: the consistent-hash ring with bounded loads (in-flight
requests are the load), each replica's health, and the counters. The FastAPI app made by
``create_app`` is transport only: it reads the body, asks the router for a replica, and
streams the replica's answer through byte for byte (server-sent events included).

A request that fails before its first byte (connection refused, reset, a 5xx) is retried
once on the next replica clockwise; the failed replica is marked down until a health
check finds it well again. Health checks poll each replica's ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from engine.router.routing import routing_key
from hashing.ring import HashRing

log = logging.getLogger(__name__)

# Hop-by-hop and length headers are the proxy's own business, not the replica's.
_DROP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass(frozen=True)
class RouterConfig:
    replicas: tuple[str, ...]
    epsilon: float = 0.25
    vnodes: int = 160
    health_interval_s: float = 2.0
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.replicas:
            raise ValueError("the router needs at least one replica (--replica URL)")
        for url in self.replicas:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica {url!r} must be an http:// or https:// URL")
        if self.health_interval_s <= 0:
            raise ValueError("the health-check interval must be positive")


@dataclass
class ReplicaState:
    url: str
    healthy: bool = True
    requests: int = 0
    peak_in_flight: int = 0
    failures: int = 0
    last_error: str = ""
    last_check: float = 0.0
    keys: set[str] = field(default_factory=set, repr=False)  # distinct routing keys served


class Router:
    """Replica choice, health and counters. Thread-safe through the ring's lock; the
    health fields are written only from the event loop."""

    def __init__(self, config: RouterConfig):
        self.config = config
        self.ring = HashRing(config.replicas, vnodes=config.vnodes, epsilon=config.epsilon)
        self.replicas = {url: ReplicaState(url) for url in config.replicas}
        self.retries = 0
        self.unroutable = 0
        self._key_cap = 100_000  # bound the distinct-key sets: stats, not state

    def acquire(self, key: str, exclude: frozenset[str] = frozenset()) -> str | None:
        node = self.ring.acquire(key, exclude)
        if node is not None:
            state = self.replicas[node]
            state.requests += 1
            state.peak_in_flight = max(state.peak_in_flight, self.ring.loads().get(node, 0))
            if len(state.keys) < self._key_cap:
                state.keys.add(key)
        return node

    def release(self, node: str) -> None:
        self.ring.release(node)

    def mark_down(self, node: str, reason: str) -> None:
        state = self.replicas[node]
        state.failures += 1
        state.last_error = reason
        if state.healthy:
            log.warning("router: replica %s is down (%s); its keys move to the next replica", node, reason)
            state.healthy = False
            self.ring.remove_node(node)

    def mark_up(self, node: str) -> None:
        state = self.replicas[node]
        if not state.healthy:
            log.info("router: replica %s is healthy again", node)
            state.healthy = True
            self.ring.add_node(node)

    def stats(self) -> dict:
        loads = self.ring.loads()
        total_keys = sum(len(s.keys) for s in self.replicas.values()) or 1
        total_requests = sum(s.requests for s in self.replicas.values()) or 1
        return {
            "epsilon": self.config.epsilon,
            "vnodes": self.config.vnodes,
            "retries": self.retries,
            "unroutable": self.unroutable,
            "replicas": [
                {
                    "url": s.url,
                    "healthy": s.healthy,
                    "in_flight": loads.get(s.url, 0),
                    "peak_in_flight": s.peak_in_flight,
                    "requests": s.requests,
                    "request_share": s.requests / total_requests,
                    "key_share": len(s.keys) / total_keys,
                    "failures": s.failures,
                    "last_error": s.last_error,
                }
                for s in self.replicas.values()
            ],
        }

    async def check_health(self, client: httpx.AsyncClient) -> None:
        async def probe(url: str) -> None:
            try:
                r = await client.get(f"{url}/healthz", timeout=self.config.connect_timeout_s)
                ok, reason = r.status_code == 200, f"healthz answered {r.status_code}"
            except httpx.HTTPError as e:
                ok, reason = False, f"healthz failed: {type(e).__name__}"
            self.replicas[url].last_check = time.time()
            if ok:
                self.mark_up(url)
            else:
                self.mark_down(url, reason)

        await asyncio.gather(*(probe(u) for u in self.replicas))


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status)


class RouterMetrics:
    """Prometheus counters of the proxy, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("kvtier_router_requests", "Requests sent to each replica", ["replica"],
                                registry=self.registry)
        self.in_flight = Gauge("kvtier_router_in_flight", "Requests in flight per replica", ["replica"],
                               registry=self.registry)
        self.healthy = Gauge("kvtier_router_replica_healthy", "1 while a replica is in the ring",
                             ["replica"], registry=self.registry)
        self.retries = Counter("kvtier_router_retries", "Requests retried on the next replica",
                               registry=self.registry)

    def render(self, router: Router) -> bytes:
        for url, state in router.replicas.items():
            self.healthy.labels(url).set(1 if state.healthy else 0)
        return generate_latest(self.registry)


async def forward(router: Router, client: httpx.AsyncClient, metrics: RouterMetrics, request: Request,
                  path: str) -> Response:
    """Send one request to its replica (once more to the next on an early failure)."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "the request body must be a JSON object")
    key = routing_key(body)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS}
    tried: set[str] = set()
    for attempt in range(2):
        node = router.acquire(key, frozenset(tried))
        if node is None:
            break
        metrics.requests.labels(node).inc()
        metrics.in_flight.labels(node).inc()
        try:
            upstream = await client.send(
                client.build_request("POST", node + path, content=raw, headers=headers), stream=True)
        except httpx.HTTPError as e:
            # Unreachable: out of the ring now, back when a health check finds it well.
            router.mark_down(node, f"{type(e).__name__}: {e}")
        else:
            if upstream.status_code < 500:
                return _stream(upstream, node, router, metrics.in_flight)
            await upstream.aclose()  # a 5xx: try the next replica; health checks judge this one
        router.release(node)
        metrics.in_flight.labels(node).dec()
        tried.add(node)
        if attempt == 0:
            router.retries += 1
            metrics.retries.inc()
    router.unroutable += 1
    return _error(503, "no healthy replica could take the request", "service_unavailable")


def create_app(router: Router) -> FastAPI:
    cfg = router.config
    metrics = RouterMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        timeout = httpx.Timeout(cfg.read_timeout_s, connect=cfg.connect_timeout_s)
        async with httpx.AsyncClient(timeout=timeout) as client:
            app.state.client = client

            async def health_loop() -> None:
                while True:
                    await router.check_health(client)
                    await asyncio.sleep(cfg.health_interval_s)

            task = asyncio.create_task(health_loop())
            try:
                yield
            finally:
                task.cancel()

    app = FastAPI(title="kvtier router", lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await forward(router, request.app.state.client, metrics, request, "/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward(router, request.app.state.client, metrics, request, "/v1/completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        for url, state in router.replicas.items():
            if state.healthy:
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.get(f"{url}/v1/models")
                    return Response(r.content, status_code=r.status_code, media_type="application/json")
        return _error(503, "no healthy replica", "service_unavailable")

    @app.get("/healthz")
    async def healthz() -> Response:
        healthy = sum(s.healthy for s in router.replicas.values())
        return JSONResponse({"status": "ok" if healthy else "no healthy replica",
                             "healthy_replicas": healthy}, status_code=200 if healthy else 503)

    @app.get("/v1/router/stats")
    async def stats() -> dict:
        return router.stats()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(router), media_type=CONTENT_TYPE_LATEST)

    return app


def _stream(upstream: httpx.Response, node: str, router: Router, in_flight: Gauge) -> StreamingResponse:
    """Pass the replica's answer through as it comes; the load is released when it ends,
    or when the client goes away (which closes the upstream and aborts the request)."""

    async def chunks() -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            router.release(node)
            in_flight.labels(node).dec()

    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_HEADERS}
    return StreamingResponse(chunks(), status_code=upstream.status_code, headers=headers)
