"""The REST admin API of a real server (token ``secret``); each test uses its own blocks."""

import httpx
import pytest

from hashing.keys import BlockHasher, Namespace
from tests.cacheserver.blocks import chain

AUTH = {"Authorization": "Bearer secret"}


@pytest.fixture(scope="module")
def api(module_server):
    """A client that sends the admin token with every request."""
    with httpx.Client(base_url=module_server.rest_url, headers=AUTH, timeout=10) as client:
        yield client


def put(api, entry):
    key, parent, _, payload = entry
    r = api.put(f"/v1/blocks/{key.hex()}", params={"parent": parent.hex()}, content=payload, headers=AUTH)
    assert r.status_code == 201, r.text
    return r.json()


def test_health_config_docs_metrics(api):
    assert api.get("/healthz").json()["status"] == "ok"
    config = api.get("/v1/config").json()
    assert config["admin_token"] == "<set>" and "secret" not in str(config)
    assert api.get("/docs").status_code == 200
    assert "/v1/lookup" in api.get("/openapi.json").json()["paths"]
    text = api.get("/metrics").text
    assert 'kvtier_tier_capacity_bytes{tier="dram"}' in text and "kvtier_store_gets_total" in text


def test_block_round_trip_and_lookup_by_tokens(api):
    blocks = chain("rest-rt", 3)
    depths = [put(api, b)["depth"] for b in blocks]
    assert depths == [0, 1, 2]  # derived from the parent when not given
    key = blocks[1][0].hex()
    info = api.get(f"/v1/blocks/{key}").json()
    expected = (blocks[0][0].hex(), 1, 4096, ["dram"])
    assert (info["parent"], info["depth"], info["size"], info["tiers"]) == expected
    assert api.get(f"/v1/blocks/{key}/data").content == blocks[1][3]
    r = api.post("/v1/lookup", json={"tokens": list(range(16)), "block_size": 4, "salt": "rest-rt"})
    assert r.json()["blocks"] == 3 and r.json()["tokens"] == 12 and r.json()["tiers"] == ["dram"] * 3
    r = api.post("/v1/lookup", json={"keys": [b[0].hex() for b in blocks]})
    assert r.json()["blocks"] == 3
    assert api.delete(f"/v1/blocks/{key}", headers=AUTH).json() == {"deleted": 1}
    assert api.get(f"/v1/blocks/{key}").status_code == 404
    assert api.post("/v1/lookup", json={"keys": [b[0].hex() for b in blocks]}).json()["blocks"] == 1


def test_listing_filters_and_pins(api):
    blocks = chain("rest-pin", 2)
    for b in blocks:
        put(api, b)
    keys = [b[0].hex() for b in blocks]
    r = api.post("/v1/pin", json={"keys": keys, "ttl": 60}, headers=AUTH)
    assert r.json()["pinned"] == 2
    pinned = {b["key"] for b in api.get("/v1/blocks", params={"pinned": True}).json()["blocks"]}
    assert set(keys) <= pinned
    assert api.post("/v1/unpin", json={"keys": keys}, headers=AUTH).json()["unpinned"] == 2
    assert api.get("/v1/blocks", params={"tier": "nope"}).status_code == 400


def test_flush_one_namespace_leaves_the_others(api):
    mine, other = chain("rest-ns-a", 3), chain("rest-ns-b", 2)
    for b in mine + other:
        put(api, b)
    r = api.post("/v1/flush", json={"namespace": {"salt": "rest-ns-a", "block_size": 4}}, headers=AUTH)
    assert r.json()["flushed"] == 3
    assert r.json()["root"] == BlockHasher(Namespace(salt="rest-ns-a"), 4).root.hex()
    assert api.post("/v1/lookup", json={"keys": [b[0].hex() for b in other]}).json()["blocks"] == 2


@pytest.mark.parametrize(("method", "path", "kwargs", "status"), [
    ("get", "/v1/blocks/zz", {}, 400),
    ("get", "/v1/blocks/" + "ab" * 15, {}, 400),
    ("get", "/v1/blocks/" + "ab" * 16, {}, 404),
    ("get", "/v1/blocks/" + "ab" * 16 + "/data", {}, 404),
    ("post", "/v1/lookup", {"json": {}}, 422),
    ("post", "/v1/lookup", {"content": b"{not json"}, 422),
    ("post", "/v1/lookup", {"json": {"keys": ["xyz"]}}, 400),
    ("post", "/v1/lookup", {"json": {"tokens": [-1, 2]}}, 400),
    ("post", "/v1/pin", {"json": {"keys": ["ab" * 16]}, "headers": AUTH}, 404),
    ("post", "/v1/pin", {"json": {"keys": [], "tier": "nope"}, "headers": AUTH}, 400),
    ("put", "/v1/blocks/" + "ab" * 16, {"content": b"x", "headers": AUTH}, 400),  # no parent
    ("put", "/v1/blocks/" + "ab" * 16 + "?parent=" + "cd" * 16, {"content": b"", "headers": AUTH}, 400),
    ("put", "/v1/blocks/" + "ab" * 16 + "?parent=" + "cd" * 16,
     {"content": b"x" * (65 << 20), "headers": AUTH}, 413),
    ("post", "/v1/flush", {"json": {"tier": "dram", "root": "ab" * 16}, "headers": AUTH}, 422),
])
def test_bad_input_gets_a_4xx_with_a_message(api, method, path, kwargs, status):
    r = api.request(method.upper(), path, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                                                 ({"X-Admin-Token": "wrong"}, 403)])
def test_mutations_and_reads_of_blocks_need_the_admin_token(api, headers, status):
    blocks = chain("rest-auth", 2)
    put(api, blocks[0])
    key = blocks[0][0].hex()
    with httpx.Client(base_url=api.base_url, headers=headers, timeout=10) as other:
        assert other.delete(f"/v1/blocks/{key}").status_code == status
        assert other.post("/v1/flush", json={}).status_code == status
        assert other.put(f"/v1/blocks/{key}?parent={key}", content=b"x").status_code == status
        # Reading blocks, or asking whether a tenant's prompt is cached, needs it too.
        assert other.get("/v1/blocks").status_code == status
        assert other.get(f"/v1/blocks/{key}").status_code == status
        assert other.get(f"/v1/blocks/{key}/data").status_code == status
        lookup = {"tokens": list(range(8)), "block_size": 4, "salt": "rest-auth"}
        assert other.post("/v1/lookup", json=lookup).status_code == status
        # Aggregates need none.
        assert other.get("/v1/stats").status_code == 200 and other.get("/metrics").status_code == 200
    assert api.post("/v1/lookup", json=lookup).json()["blocks"] == 1
