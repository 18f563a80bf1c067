"""The data plane of a real ``kvtier serve``: framing errors, persistence, concurrency."""

import socket
import threading

import httpx

from cacheserver import protocol as p
from clients.cache_client import CacheClient
from tests.cacheserver.blocks import chain


def test_bad_frame_gets_an_error_and_leaves_other_connections_working(served):
    good = CacheClient(served.data_url)
    blocks = chain("bad-frame", 2)
    assert good.put(blocks) == 2
    with socket.create_connection(("127.0.0.1", served.data_port)) as bad:
        bad.sendall(b"NOT A FRAME AT ALL!!")
        reply = p.unpack_header(bad.recv(p.HEADER_SIZE, socket.MSG_WAITALL))
        assert reply.code == p.Status.BAD_FRAME
        assert b"magic" in bad.recv(reply.body_len, socket.MSG_WAITALL)
        assert bad.recv(1) == b""  # and the server closed it
    with socket.create_connection(("127.0.0.1", served.data_port)) as huge:
        huge.sendall(p.Header(p.Op.PUT, 1, 1, 1 << 50).pack())  # claims a petabyte
        assert p.unpack_header(huge.recv(p.HEADER_SIZE, socket.MSG_WAITALL)).code == p.Status.BAD_FRAME
    assert good.lookup([b[0] for b in blocks]) == ["dram", "dram"]
    assert good.counters.failures == 0
    stats = httpx.get(served.rest_url + "/v1/stats").json()
    assert stats["data_plane"]["errors"]["BAD_FRAME"] == 2


def test_blocks_survive_sigterm_and_restart_as_flash_hits(served):
    blocks = chain("persist", 3)
    with CacheClient(served.unix_url) as c:
        assert c.put(blocks) == 3
    assert served.stop() == 0
    assert "store persisted" in served.output
    served.start()
    with CacheClient(served.data_url) as c:
        assert c.lookup([b[0] for b in blocks]) == ["flash"] * 3
        assert [bytes(x) for x in c.get([b[0] for b in blocks])] == [b[3] for b in blocks]
    stats = httpx.get(served.rest_url + "/v1/stats").json()
    assert {t["name"]: t["hits"] for t in stats["tiers"]}["flash"] == 3


def test_sixteen_concurrent_clients_lose_and_corrupt_nothing(serve_factory):
    served = serve_factory(dram_gb=0.004, flash_gb=0.2)  # 4 MiB of DRAM: eviction to flash happens
    errors = []

    def work(i: int) -> None:
        url = served.unix_url if i % 2 else served.data_url
        with CacheClient(url) as c:
            for round_ in range(4):
                blocks = chain(f"c{i}r{round_}", 4, size=16384 + 1024 * i)
                keys = [b[0] for b in blocks]
                if c.put(blocks) != 4 or len(c.lookup(keys)) != 4:
                    errors.append(f"client {i}: put or lookup lost blocks")
                got = c.get(keys)
                if [bytes(g) if g is not None else None for g in got] != [b[3] for b in blocks]:
                    errors.append(f"client {i}: corrupt or missing payload")
            if c.counters.failures:
                errors.append(f"client {i}: {c.counters}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = httpx.get(served.rest_url + "/v1/stats").json()
    assert stats["blocks"] == 16 * 4 * 4
    assert {t["name"]: t["evictions"] for t in stats["tiers"]}["dram"] > 0


def test_a_service_without_a_gpu_tier_never_loads_torch(served):
    """torch costs a second of start and hundreds of MB; only an HBM tier or a page-locked
    DRAM tier needs it."""
    with CacheClient(served.unix_url) as c:
        assert c.put(chain("no-torch", 2)) == 2
        assert c.get_mapped([b[0] for b in chain("no-torch", 2)])[1] is not None
    with open(f"/proc/{served.pid}/maps") as maps:
        assert "libtorch" not in maps.read()
