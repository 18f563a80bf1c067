"""Security properties of a real ``kvtier serve`` (admin token ``secret``): every mutation
in the OpenAPI document needs the token, the defaults bind to loopback only, and block
listings carry keys and sizes, never token ids (the store keeps none)."""

from __future__ import annotations

import httpx

from clients.cache_client import CacheClient
from clients.cli import build_parser
from tests.cacheserver.blocks import chain

BLOCK_FIELDS = {"key", "parent", "depth", "size", "tiers", "pinned", "hits", "last_access", "children"}


def test_every_mutation_in_the_openapi_document_needs_the_token(module_server):
    api = httpx.Client(base_url=module_server.rest_url)
    paths = api.get("/openapi.json").json()["paths"]
    mutations = [(m, path.replace("{key}", "ab" * 16)) for path, ops in paths.items() for m in ops
                 if m in ("put", "post", "delete", "patch") and path != "/v1/lookup"]
    assert len(mutations) == 5  # put and delete a block, pin, unpin, flush
    for method, path in mutations:
        assert api.request(method, path, json={}).status_code == 401, (method, path)
        assert api.request(method, path, json={}, headers={"X-Admin-Token": "secreT"}).status_code == 403


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
    rows = httpx.get(module_server.rest_url + "/v1/blocks", params={"limit": 10_000}).json()["blocks"]
    assert rows and all(set(r) == BLOCK_FIELDS for r in rows)
    one = httpx.get(module_server.rest_url + f"/v1/blocks/{blocks[0][0].hex()}").json()
    assert set(one) == BLOCK_FIELDS
