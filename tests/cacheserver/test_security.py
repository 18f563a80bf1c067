"""Security properties of a real ``kvtier serve`` (admin token ``secret``): every mutation
in the OpenAPI document needs the token, the defaults bind to loopback only, and block
listings carry keys and sizes, never token ids (the store keeps none)."""

from __future__ import annotations

import httpx

from clients.cache_client import CacheClient
from clients.cli import build_parser
from tests.cacheserver.blocks import chain

BLOCK_FIELDS = {"key", "parent", "depth", "size", "tiers", "pinned", "hits", "last_access", "children"}


OPEN = {"/healthz", "/metrics", "/v1/stats", "/v1/config"}  # aggregates, never a block or a key


def test_every_operation_but_the_aggregates_needs_the_token(module_server):
    """From the OpenAPI document: every mutation, and every read that names or lists blocks
    (so a tenant can neither read nor probe another's blocks), answers 401 without the
    token and 403 with a wrong one."""
    api = httpx.Client(base_url=module_server.rest_url)
    paths = api.get("/openapi.json").json()["paths"]
    guarded = [(m, path.replace("{key}", "ab" * 16)) for path, ops in paths.items() for m in ops
               if path not in OPEN]
    assert len(guarded) == 9  # put, delete, show, data of a block; listing; lookup; pin; unpin; flush
    for method, path in guarded:
        assert api.request(method, path, json={}).status_code == 401, (method, path)
        assert api.request(method, path, json={}, headers={"X-Admin-Token": "secreT"}).status_code == 403
    for path in OPEN:
        assert api.get(path).status_code == 200, path


def test_every_listener_defaults_to_loopback():
    parser = build_parser()
    from cacheserver.config import load

    assert load({}, {}).host == "127.0.0.1"
    for argv in (["engine"], ["router", "--replica", "http://127.0.0.1:1"], ["up"]):
        args, _ = parser.parse_known_args(argv)
        assert args.host == "127.0.0.1", argv


def test_block_listings_expose_no_token_ids(module_server):
    blocks = chain("listing", 2)
    with CacheClient(module_server.data_url) as c:
        assert c.put(blocks) == 2
    auth = {"Authorization": "Bearer secret"}
    rows = httpx.get(module_server.rest_url + "/v1/blocks", params={"limit": 10_000}, headers=auth)
    rows = rows.json()["blocks"]
    assert rows and all(set(r) == BLOCK_FIELDS for r in rows)
    one = httpx.get(module_server.rest_url + f"/v1/blocks/{blocks[0][0].hex()}", headers=auth).json()
    assert set(one) == BLOCK_FIELDS
