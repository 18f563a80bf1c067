"""The REST admin API (FastAPI): health, stats, config, lookup, blocks, pin, flush, metrics.

Bad input gets a 4xx with a message (400 malformed key or token, 404 unknown block, 413
oversize body, 422 a body that does not parse), never a 500. Mutations need the admin
token when one is configured (see ``cacheserver.auth``). Handlers are plain ``def``s:
FastAPI runs them in its thread pool and the store is thread-safe.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cacheserver.auth import AdminAuth
from cacheserver.bodylimit import BodyLimit, read_body
from cacheserver.config import ServeConfig
from cacheserver.dataplane import DataPlaneCounters
from cacheserver.health import flash_status
from cacheserver.metrics import registry_for
from cacheserver.schemas import BlockSelection, FlushRequest, PinRequest
from cacheserver.selection import hasher_for, namespace_blocks, selected_keys
from hashing.keys import parse_key
from tiers.base import PayloadSizeError, StoreFullError, UnknownBlockError, make_block
from tiers.store import NotDurableError, TieredStore


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    # Most specific first: PayloadSizeError is also a ValueError, UnknownBlockError a KeyError.
    app.add_exception_handler(UnknownBlockError, lambda r, e: _error(404, str(e)))
    app.add_exception_handler(PayloadSizeError, lambda r, e: _error(413, str(e)))
    app.add_exception_handler(StoreFullError, lambda r, e: _error(507, str(e)))
    app.add_exception_handler(NotDurableError, lambda r, e: _error(503, str(e)))
    app.add_exception_handler(ValueError, lambda r, e: _error(400, str(e)))


def create_app(store: TieredStore, config: ServeConfig, plane: DataPlaneCounters,
               flash_problem: str = "") -> FastAPI:
    """``flash_problem``: why the configured flash tier could not be opened (empty if it was)."""
    app = FastAPI(title="kvtier cache service", version="1", description=__doc__)
    app.add_middleware(BodyLimit, max_bytes=config.max_rest_body_mb << 20)
    _install_error_handlers(app)
    admin = Depends(AdminAuth(config.admin_token))
    registry = registry_for(store, plane)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "blocks": len(store)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/stats")
    def stats() -> dict:
        out = store.stats()
        flash = flash_status(out["tiers"], bool(config.flash_gb), flash_problem)
        return {**out, "flash_status": flash, "degraded": flash["state"] in ("unavailable", "degraded"),
                "durable": config.flash_sync and not flash_problem, "data_plane": _plane_stats(plane)}

    @app.get("/v1/config")
    def get_config() -> dict:
        return config.public()

    # Reads that name blocks need the token too: with it, tenants cannot probe or read each
    # other's blocks here (a lookup by tokens and another tenant's salt would say whether that
    # tenant's prompt is cached).
    @app.post("/v1/lookup", dependencies=[admin])
    def lookup(sel: BlockSelection) -> dict:
        keys = selected_keys(sel)
        tiers = store.lookup(keys)
        out = {"blocks": len(tiers), "keys": [k.hex() for k in keys[: len(tiers)]], "tiers": tiers,
               "requested_blocks": len(keys)}
        if sel.tokens is not None:
            out["tokens"] = len(tiers) * sel.block_size
            out["root"] = hasher_for(sel).root.hex()
        return out

    @app.get("/v1/blocks", dependencies=[admin])
    def list_blocks(tier: str | None = None, pinned: bool | None = None,
                    offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10_000)) -> dict:
        rows = store.list_blocks(tier, pinned, offset, limit)
        return {"blocks": rows, "offset": offset, "limit": limit, "total": len(store)}

    @app.get("/v1/blocks/{key}", dependencies=[admin])
    def show_block(key: str) -> dict:
        return store.info(parse_key(key))

    @app.get("/v1/blocks/{key}/data", dependencies=[admin])
    def block_data(key: str) -> Response:
        payload = store.get([parse_key(key)])[0]
        if payload is None:
            raise UnknownBlockError(f"block {key} is not in the store")
        return Response(payload, media_type="application/octet-stream")

    @app.put("/v1/blocks/{key}", status_code=201, dependencies=[admin])
    async def put_block(key: str, request: Request, parent: str | None = None,
                        depth: int | None = Query(None, ge=0, lt=1 << 32)) -> dict:
        block_key = parse_key(key)
        parent = parent or request.headers.get("x-kvtier-parent")
        if parent is None:
            raise ValueError("give the parent key as ?parent=HEX or an X-Kvtier-Parent header")
        parent_key = parse_key(parent)
        payload = await read_body(request, config.max_rest_body_mb << 20)
        if not payload:
            raise ValueError("the block payload (the request body) is empty")
        if depth is None:
            depth = _depth_below(store, parent_key)
        new = store.put([make_block(block_key, parent_key, depth, payload)])
        return {"key": key, "stored": new, "size": len(payload), "depth": depth}

    @app.delete("/v1/blocks/{key}", dependencies=[admin])
    def delete_block(key: str) -> dict:
        if not store.delete([parse_key(key)]):
            raise UnknownBlockError(f"block {key} is not in the store")
        return {"deleted": 1}

    @app.post("/v1/pin", dependencies=[admin])
    def pin(req: PinRequest) -> dict:
        keys = selected_keys(req)
        return {"pinned": store.pin(keys, req.tier, req.ttl), "tier": req.tier or store.tier_names[0]}

    @app.post("/v1/unpin", dependencies=[admin])
    def unpin(req: BlockSelection) -> dict:
        return {"unpinned": store.unpin(selected_keys(req))}

    @app.post("/v1/flush", dependencies=[admin])
    def flush(req: FlushRequest) -> dict:
        root = parse_key(req.root) if req.root else hasher_for(req.namespace).root if req.namespace else None
        if root is None:
            return {"flushed": store.clear(req.tier, req.include_pinned), "scope": req.tier or "all"}
        keys = namespace_blocks(store, root, req.include_pinned)
        return {"flushed": store.delete(keys), "scope": "namespace", "root": root.hex()}

    return app


def _depth_below(store: TieredStore, parent: bytes) -> int:
    """Depth of a block under ``parent``: one more than the parent's, 0 under a root."""
    try:
        return store.info(parent)["depth"] + 1
    except UnknownBlockError:
        return 0


def _plane_stats(plane: DataPlaneCounters) -> dict:
    return {"requests": dict(plane.requests), "errors": dict(plane.errors), "bytes_in": plane.bytes_in,
            "bytes_out": plane.bytes_out, "connections": plane.connections,
            "open_connections": plane.open_connections, "mapped_bytes": plane.mapped_bytes,
            "injected_delays": plane.injected_delays,
            "injected_garbage": plane.injected_garbage}
