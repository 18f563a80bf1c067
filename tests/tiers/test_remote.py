"""The remote tier against a real redis-server on loopback: values, keys, faults, and two
stores (two "hosts") sharing prefixes through it, TLS with a user. Cluster cases are in
tests/cacheserver/test_remote_service.py and tests/engine/test_remote_fleet.py."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
import redis

from benchmarks.redis_servers import RedisServer
from cacheserver.process import free_port
from tiers import remote_value
from tiers.base import make_block
from tiers.remote import RemoteSettings, RemoteTier
from tiers.slab import dram_tier
from tiers.store import TieredStore

from .conftest import PAGE, chain, payload_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield s
    s.stop()


@pytest.fixture
def raw(server):
    r = redis.Redis(port=server.port)
    r.flushall()
    yield r
    r.close()


@pytest.fixture
def make_remote(server, raw):
    made = []

    def make(**settings) -> RemoteTier:
        settings = {"urls": (server.url,), **settings}
        made.append(RemoteTier(RemoteSettings(**settings)))
        return made[-1]

    yield make
    for r in made:
        r.close(drain_s=1)


def host(remote: RemoteTier, blocks: int = 16) -> TieredStore:
    """A cache service's store on its own host: a small DRAM tier over the shared remote."""
    return TieredStore([dram_tier(blocks * PAGE, PAGE)], policy="lru", remote=remote)


def test_a_chain_round_trips_and_stops_at_the_first_missing_block(make_remote, raw):
    remote = make_remote()
    blocks = chain("rt", 5)
    assert remote.write_behind(blocks[:2] + blocks[3:]) == 4
    assert remote.drain()
    got = remote.fetch([b.key for b in blocks], chain=True)
    assert [(g.key, g.parent, g.depth, bytes(g.payload)) for g in got] == \
        [(b.key, b.parent, b.depth, bytes(b.payload)) for b in blocks[:2]]
    assert len(remote.fetch([b.key for b in blocks], chain=False)) == 4
    c = remote.counters
    assert (c.writes, c.hits, c.misses, c.corrupt, c.errors) == (4, 6, 4, 0, 0)


def test_keys_are_hash_tagged_hex_whatever_bytes_the_block_key_holds():
    key = b"{" + bytes(range(1, 15)) + b"}"
    head, tail = remote_value.redis_keys(key)
    assert head == b"kvtier:{" + key.hex().encode() + b"}" and tail == head + b"+"
    assert head.count(b"{") == 1 and head.count(b"}") == 1  # the only tag is ours


def test_a_value_just_over_a_size_class_is_cut_so_redis_stores_it_in_the_class(make_remote, raw):
    remote = make_remote()
    two_mib = chain("big", 1)[0]
    block = make_block(two_mib.key, two_mib.parent, 0, payload_for(two_mib.key, 2 << 20))
    remote.write_behind([block])
    assert remote.drain()
    head, tail = remote_value.redis_keys(block.key)
    used = raw.memory_usage(head, samples=0) + raw.memory_usage(tail, samples=0)
    # Whole, the value (2 MiB + 60 B) would take jemalloc's 2.5 MiB class.
    assert (2 << 20) < used < (2 << 20) + 1024
    got = remote.fetch([block.key], chain=True)[0]
    assert isinstance(got.payload, tuple) and len(got.payload) == 2  # head and tail, not joined
    assert b"".join(got.payload) == bytes(block.payload) and got.size == 2 << 20
    # 360 KiB + 60 B sits inside the 384 KiB class: kept whole.
    assert remote_value.split_at(360 * 1024 + 60) == 360 * 1024 + 60


@pytest.mark.parametrize("damage", ["garbage", "flipped payload byte", "foreign", "torn", "wrong version"])
def test_a_damaged_value_is_a_miss_counted_and_deleted(make_remote, raw, damage):
    remote = make_remote()
    blocks = chain("bad", 2)
    big = make_block(blocks[1].key, blocks[1].parent, 1, payload_for(blocks[1].key, 2 << 20))
    remote.write_behind([blocks[0], big])
    assert remote.drain()
    head, tail = remote_value.redis_keys(blocks[0].key)
    value = raw.get(head)
    if damage == "garbage":
        raw.set(head, b"\x00not a kvtier value")
    elif damage == "flipped payload byte":
        raw.set(head, value[:-1] + bytes([value[-1] ^ 1]))
    elif damage == "foreign":  # a valid value of another block, under this key
        raw.set(head, raw.get(remote_value.redis_keys(blocks[1].key)[0]) + raw.get(
            remote_value.redis_keys(blocks[1].key)[1]))
    elif damage == "torn":  # the big block's tail evicted on its own
        head, tail = remote_value.redis_keys(blocks[1].key)
        raw.delete(tail)
    else:
        raw.set(head, value[:20] + b"\x07" + value[21:])
    damaged = 0 if head == remote_value.redis_keys(blocks[0].key)[0] else 1
    got = remote.fetch([b.key for b in blocks], chain=False)
    assert [g.key for g in got] == [b.key for i, b in enumerate(blocks) if i != damaged]
    assert remote.counters.corrupt == 1
    assert raw.exists(head) == 0
    assert remote.fetch([blocks[damaged].key], chain=False) == []  # deleted: a plain miss now
    assert remote.counters.corrupt == 1


@pytest.mark.parametrize("damage", ["flipped head byte", "flipped tail byte", "wrong version",
                                    "tail too long", "short head"])
def test_a_damaged_cut_value_is_refused_without_joining_its_parts(make_remote, raw, damage):
    """Head and tail are verified in place (header from the head, checksum streamed over
    both): damage in either part is a miss, counted and deleted, never a wrong block."""
    remote = make_remote()
    block = chain("cut", 1)[0]
    block = make_block(block.key, block.parent, 0, payload_for(block.key, 2 << 20))
    remote.write_behind([block])
    assert remote.drain()
    head, tail = remote_value.redis_keys(block.key)
    h, t = raw.get(head), raw.get(tail)
    if damage == "flipped head byte":
        raw.set(head, h[:-1] + bytes([h[-1] ^ 1]))
    elif damage == "flipped tail byte":
        raw.set(tail, bytes([t[0] ^ 1]) + t[1:])
    elif damage == "wrong version":
        raw.set(head, h[:20] + b"\x07" + h[21:])
    elif damage == "tail too long":
        raw.set(tail, t + b"x")
    else:
        raw.set(head, h[:30])
    assert remote.fetch([block.key], chain=True) == []
    assert remote.counters.corrupt == 1 and raw.exists(head) == 0


def test_two_hosts_share_a_prefix_and_the_reader_promotes_it(make_remote):
    a, b = host(make_remote()), host(make_remote())
    blocks = chain("shared", 6)
    assert a.put(blocks) == 6
    assert a.remote.drain()
    assert b.lookup([x.key for x in blocks]) == ["dram"] * 6  # promoted into B's DRAM
    assert b.get([x.key for x in blocks]) == [bytes(x.payload) for x in blocks]
    assert b.stats()["remote_promotions"] == 6
    assert b.stats()["remote"]["hits"] == 6
    assert b.put(blocks) == 0  # already held: not written back
    assert b.remote.drain() and b.remote.counters.writes == 0
    # A get without a lookup first finds them too (promoted on the get).
    c = host(make_remote())
    arena = bytearray(6 * 1000)
    assert [bytes(v) for v in c.get_into([x.key for x in blocks[2:]], arena)] == \
        [bytes(x.payload) for x in blocks[2:]]


def test_the_lookup_stops_at_the_first_block_missing_in_every_tier(make_remote):
    a, b = host(make_remote()), host(make_remote())
    blocks = chain("gap", 5)
    a.put(blocks[:2] + blocks[3:])
    a.remote.drain()
    b.put(blocks[:1])  # local, then the rest from the remote
    assert b.lookup([x.key for x in blocks]) == ["dram", "dram"]


def test_the_remote_store_down_is_misses_and_counters_then_hits_again(tmp_path, make_remote):
    server = RedisServer(tmp_path / "down").start()
    store = host(make_remote(urls=(server.url,), timeout_s=0.2, breaker_failures=2, breaker_cooldown_s=0.3))
    blocks = chain("down", 3)
    server.kill()
    assert store.put(blocks) == 3  # acknowledged by the local tier
    assert store.remote.drain()
    other = host(make_remote(urls=(server.url,), timeout_s=0.2, breaker_failures=2, breaker_cooldown_s=0.3))
    for _ in range(4):
        assert other.lookup([x.key for x in blocks]) == []
    c = other.remote.counters
    assert c.errors >= 3 and c.breaker_opens == 1 and c.skipped >= 3 and c.hits == 0
    assert store.remote.counters.write_errors == 3
    server.start()  # the same port, empty
    time.sleep(0.35)  # the breaker's cooldown
    store.remote.write_behind(blocks)
    assert store.remote.drain()
    assert other.lookup([x.key for x in blocks]) == ["dram"] * 3
    server.stop()


def test_a_slow_remote_store_costs_at_most_its_timeout_and_never_holds_the_store_lock(
        server, make_remote, raw):
    store = host(make_remote(timeout_s=0.3))
    local = chain("local", 2)
    store.put(local)
    store.remote.drain()
    raw.execute_command("CLIENT", "PAUSE", "1500", "ALL")
    took, local_took = [], []

    def remote_lookup():
        t0 = time.perf_counter()
        assert store.lookup([x.key for x in chain("absent", 3)]) == []
        took.append(time.perf_counter() - t0)

    t = threading.Thread(target=remote_lookup)
    t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    assert store.lookup([x.key for x in local]) == ["dram", "dram"]  # while the other waits
    local_took.append(time.perf_counter() - t0)
    t.join()
    raw.execute_command("CLIENT", "UNPAUSE")
    assert local_took[0] < 0.1
    assert 0.25 < took[0] < 1.0
    assert store.remote.counters.errors == 3 and store.remote.counters.faults == {"TimeoutError": 1}


def test_a_full_write_queue_drops_and_counts(make_remote, raw):
    remote = make_remote(queue_bytes=2500, timeout_s=2)  # room for two 1000 B blocks and headers
    blocks = chain("queue", 6)
    raw.execute_command("CLIENT", "PAUSE", "500", "WRITE")  # the writer waits on its first batch
    assert remote.write_behind(blocks) == 2  # bytes stay reserved until they are sent
    assert remote.drain()
    assert (remote.counters.writes, remote.counters.dropped_writes) == (2, 4)


def test_settings_refuse_a_url_that_is_not_redis():
    with pytest.raises(ValueError, match="redis://"):
        RemoteSettings(("http://127.0.0.1:6379",))
    with pytest.raises(ValueError, match="at least one URL"):
        RemoteSettings(())


def test_tls_with_a_user_and_password(tmp_path, make_remote):
    """``rediss://`` to a real TLS port (a self-signed certificate, its CA given in the URL)
    with an ACL user: blocks round-trip; a wrong password or a plain connection to the TLS
    port is a miss and a counted fault, never an exception."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls_port = free_port()
    server = RedisServer(tmp_path / "tls", extra=(
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-auth-clients", "no", "--user", "kv", "on", ">secret", "~*", "&*", "+@all")).start()
    url = f"rediss://kv:secret@127.0.0.1:{tls_port}?ssl_ca_certs={cert}"
    try:
        blocks = chain("tls", 3)
        remote = make_remote(urls=(url,))
        assert remote.write_behind(blocks) == 3 and remote.drain()
        got = remote.fetch([b.key for b in blocks], chain=True)
        assert [bytes(g.payload) for g in got] == [bytes(b.payload) for b in blocks]
        assert remote.mode == "single" and remote.stats()["urls"] == [f"rediss://kv:***@127.0.0.1:{tls_port}"]
        for wrong in (url.replace(":secret@", ":wrong@"), f"redis://127.0.0.1:{tls_port}"):
            other = make_remote(urls=(wrong,), timeout_s=0.3)
            assert other.fetch([b.key for b in blocks], chain=True) == []
            assert other.counters.errors == 3 and other.counters.faults, other.counters
    finally:
        server.stop()
