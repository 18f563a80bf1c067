"""The same-host path: clients on the Unix socket map the service's DRAM tier read-only and
copy blocks out of it themselves (``MAP``, ``GET_MAPPED``), against a real ``kvtier serve``."""

from __future__ import annotations

import mmap
import os
import socket
import stat

import pytest

from cacheserver import protocol as p
from cacheserver.dataplane import DataPlane, Limits
from clients.cache_client import CacheClient
from clients.calls import Plan, Request, ServerError
from clients.connection import Connection
from clients.counters import ClientCounters
from clients.guard import ClientOptions
from clients.shared import STALE, Mapped, SharedSlab
from clients.url import parse_url
from tests.cacheserver.blocks import chain, keys_of
from tiers import sharedmem
from tiers.base import Location
from tiers.slab import dram_tier
from tiers.store import TieredStore

pytestmark = pytest.mark.skipif(not sharedmem.supported(), reason="shared memory needs x86-64 Linux")

MISSING_KEY = b"\x07" * 16


def test_a_unix_client_copies_blocks_out_of_shared_memory(served):
    blocks = chain("shm", 6, size=100_000)
    with CacheClient(served.unix_url) as c:
        assert c.put(blocks) == 6
        got = c.get([*keys_of(blocks), MISSING_KEY])
        assert [bytes(g) for g in got[:6]] == [b[3] for b in blocks]
        assert got[6] is None
        outs = [memoryview(bytearray(120_000)) for _ in blocks]
        assert c.get_into(keys_of(blocks), outs) == [100_000] * 6
        assert [bytes(o[:100_000]) for o in outs] == [b[3] for b in blocks]
        assert c.counters.mapped_bytes == 2 * 6 * 100_000
        assert c.counters.bytes_received < 2_000  # no payload crossed the socket
        assert c.counters.failures == 0
    stats = served.stats()
    assert stats["data_plane"]["mapped_bytes"] == 2 * 6 * 100_000


def test_blocks_outside_dram_arrive_inline(serve_factory):
    served = serve_factory(dram_gb=1 / 1024)  # 1 MiB of DRAM: most of the chain goes to flash
    blocks = chain("spill", 12, size=200_000)
    with CacheClient(served.unix_url) as c:
        assert c.put(blocks) == 12
        tiers = c.lookup(keys_of(blocks))
        assert "flash" in tiers and "dram" in tiers
        got = c.get(keys_of(blocks))
        assert [bytes(g) for g in got] == [b[3] for b in blocks]
        in_dram = tiers.count("dram")
        assert 0 < c.counters.mapped_bytes <= in_dram * 200_000
        assert c.counters.bytes_received > (12 - in_dram) * 200_000  # the flash ones came inline


def test_a_flash_hit_is_promoted_and_copied_out_of_shared_memory(served):
    blocks = chain("from-flash", 4, size=100_000)
    with CacheClient(served.unix_url) as c:
        assert c.put(blocks) == 4
    served.restart()  # SIGTERM persists DRAM to flash; the new process starts with DRAM empty
    with CacheClient(served.unix_url) as c:
        assert c.lookup(keys_of(blocks)) == ["flash"] * 4
        assert [bytes(g) for g in c.get(keys_of(blocks))] == [b[3] for b in blocks]
        assert c.counters.mapped_bytes == 4 * 100_000
        assert c.counters.bytes_received < 2_000  # no payload crossed the socket
        assert c.lookup(keys_of(blocks)) == ["dram"] * 4


def test_a_block_moved_while_it_was_copied_is_refused_not_served_mixed(served):
    """The seqlock, step by step: locate a block, make the service free its pages and write
    another block there, then copy: the copy is recognised as stale."""
    old, new = chain("old", 1, size=65_536)[0], chain("new", 1, size=65_536)[0]
    writer = CacheClient(served.data_url)
    assert writer.put([old]) == 1
    conn = Connection(parse_url(served.unix_url), 2.0)
    fds, body = conn.map_shared(2.0)
    try:
        slab = SharedSlab(fds, p.parse_map(body), ClientCounters())
    finally:
        for fd in fds:
            os.close(fd)

    def locate(key: bytes) -> list:
        request = Request(p.Op.GET_MAPPED, 1, [p.get_mapped_body([key], ["dram"])])
        plan = Plan([request], lambda n, body: p.parse_get_mapped(body, n, {"dram": slab.slab_bytes}),
                    lambda parts: parts[0], None)
        return conn.exchange(plan, 2.0)

    where = locate(old[0])
    assert isinstance(where[0], Location)
    assert bytes(slab.copy_out(where)[0]) == old[3]  # still there: a whole copy
    assert writer.delete([old[0]]) == 1 and writer.put([new]) == 1
    moved = locate(new[0])[0]
    assert moved.offset == where[0].offset  # the new block took the freed pages
    assert slab.copy_out(where) == [STALE]
    assert slab.counters.stale_blocks == 1
    assert bytes(slab.copy_out([moved])[0]) == new[3]
    conn.close()
    writer.close()


def test_map_is_refused_over_tcp(served):
    with socket.create_connection(("127.0.0.1", served.data_port)) as s:
        s.sendall(p.Header(p.Op.MAP, 1, 0, 0).pack())
        reply = p.unpack_header(s.recv(p.HEADER_SIZE, socket.MSG_WAITALL))
        assert reply.code == p.Status.BAD_REQUEST
        assert b"Unix socket only" in s.recv(reply.body_len, socket.MSG_WAITALL)


def test_without_shared_memory_unix_clients_get_over_the_socket(serve_factory):
    served = serve_factory(shared_memory=False)
    blocks = chain("plain", 3, size=50_000)
    with CacheClient(served.unix_url) as c:
        assert c.put(blocks) == 3
        assert [bytes(g) for g in c.get(keys_of(blocks))] == [b[3] for b in blocks]
        assert c.counters.mapped_bytes == 0 and c.counters.failures == 0
    served.stop()
    assert "shared memory" not in served.output and "kvtier serve: data plane on unix://" in served.output


def test_the_mapping_is_read_only_and_the_socket_owner_only(served):
    assert stat.S_IMODE(os.stat(served.unix_path).st_mode) == 0o600
    conn = Connection(parse_url(served.unix_url), 2.0)
    fds, body = conn.map_shared(2.0)
    slab_bytes = p.parse_map(body)[0]
    try:
        with pytest.raises(PermissionError):
            mmap.mmap(fds[0], slab_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(OSError):  # opened read-only: EBADF
            os.write(fds[0], b"x")
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def test_a_client_that_opts_out_never_maps(served):
    blocks = chain("opt-out", 2, size=10_000)
    with CacheClient(served.unix_url, ClientOptions(shared_memory=False)) as c:
        assert c.put(blocks) == 2
        assert [bytes(g) for g in c.get(keys_of(blocks))] == [b[3] for b in blocks]
        assert c.counters.mapped_bytes == 0


def test_a_block_spread_over_several_runs_is_sent_and_copied_whole():
    """A slab fragmented on purpose (no data plane socket needed): a block in two runs goes
    out whole over GET (two segments sent from the slab) and through shared memory."""
    store = TieredStore([dram_tier(4 * 1024, page_size=1024, shared=True)])
    plane = DataPlane(store, Limits(max_frame_bytes=1 << 20, max_batch=8))
    singles = chain("single", 4, size=1024)
    plane.handle(p.Header(p.Op.PUT, 1, 4, 0), memoryview(b"".join(bytes(b) for b in p.put_buffers(singles))))
    plane.handle(p.Header(p.Op.DELETE, 2, 2, 0), memoryview(p.keys_body([singles[1][0], singles[3][0]])))
    spread = chain("spread", 1, size=2000)
    plane.handle(p.Header(p.Op.PUT, 3, 1, 0), memoryview(b"".join(bytes(b) for b in p.put_buffers(spread))))
    key = p.keys_body([spread[0][0]])

    reply = plane.handle(p.Header(p.Op.GET, 4, 1, 16), memoryview(key))
    body = b"".join(bytes(memoryview(b)) for b in reply.buffers) + reply.trailer()
    reply.sent()
    assert bytes(p.parse_get(memoryview(body), 1)[0]) == spread[0][3]

    mapped = plane.handle(p.Header(p.Op.MAP, 5, 0, 0), memoryview(b""), local=True)
    slab = SharedSlab(list(mapped.fds), p.parse_map(bytes(mapped.buffers[0])), ClientCounters())
    for fd in mapped.fds:
        os.close(fd)
    request = p.get_mapped_body([spread[0][0]], ["dram"])
    reply = plane.handle(p.Header(p.Op.GET_MAPPED, 6, 1, len(request)), memoryview(request))
    body = memoryview(b"".join(bytes(b) for b in reply.buffers))
    where = p.parse_get_mapped(body, 1, {"dram": slab.slab_bytes})
    reply.sent()
    assert len(where[0].segments) == 2
    assert bytes(slab.copy_out(where)[0]) == spread[0][3]


@pytest.mark.gpu
def test_with_an_hbm_tier_new_blocks_go_to_shared_dram_and_hbm_takes_its_evictions(serve_factory):
    """DRAM comes before HBM: a same-host client maps every DRAM block, and HBM holds only
    what DRAM evicted (which would otherwise have gone to flash)."""
    served = serve_factory(dram_gb=1 / 1024, hbm_gb=4 / 1024)  # 1 MiB DRAM, 4 MiB HBM
    blocks = chain("hbm-below", 12, size=200_000)
    with CacheClient(served.unix_url) as c:
        assert c.put(blocks) == 12
        tiers = c.lookup(keys_of(blocks))
        assert set(tiers) == {"dram", "hbm"} and tiers[-1] == "dram"
        in_dram = tiers.count("dram")
        got = c.get(keys_of(blocks))
        assert [bytes(g) for g in got] == [b[3] for b in blocks]
        assert c.counters.mapped_bytes >= in_dram * 200_000


def test_map_device_is_refused_where_no_gpu_memory_is_shared_and_the_client_carries_on(served):
    """An engine that asks for the HBM slab (``ClientOptions.device``) from a service with
    none still gets every hit: DRAM ones through shared memory, as before."""
    conn = Connection(parse_url(served.unix_url), 2.0)
    with pytest.raises(ServerError, match="shares no GPU memory"):
        conn.map_shared(2.0, p.Op.MAP_DEVICE)
    conn.close()
    blocks = chain("no-hbm", 3, size=50_000)
    with CacheClient(served.unix_url, ClientOptions(device="cuda")) as c:
        assert c.put(blocks) == 3
        got = c.get_mapped(keys_of(blocks))
        assert all(isinstance(g, Mapped) and g.slab.name == "dram" and not g.slab.on_gpu for g in got)
        assert [bytes(g) for g in c.get(keys_of(blocks))] == [b[3] for b in blocks]
        assert c.counters.failures == 0


def test_get_mapped_naming_a_slab_the_service_does_not_share_is_refused(served):
    request = p.get_mapped_body([MISSING_KEY], ["dram", "hbm"])
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(served.unix_path)
        s.sendall(p.Header(p.Op.GET_MAPPED, 1, 1, len(request)).pack() + request)
        reply = p.unpack_header(s.recv(p.HEADER_SIZE, socket.MSG_WAITALL))
        assert reply.code == p.Status.BAD_REQUEST
        assert b"shares no hbm slab" in s.recv(reply.body_len, socket.MSG_WAITALL)


@pytest.mark.gpu
def test_an_engine_on_the_services_gpu_loads_hbm_hits_gpu_to_gpu(serve_factory):
    """The HBM slab through CUDA IPC: blocks DRAM evicted into HBM come back as ``Mapped``
    in the GPU slab, copy GPU to GPU into pages whole, and one deleted meanwhile is refused."""
    import torch

    from engine.runtime.page_loader import PageLoader

    served = serve_factory(dram_gb=1 / 1024, hbm_gb=4 / 1024)  # 1 MiB DRAM, 4 MiB HBM
    blocks = chain("ipc", 12, size=200_000)
    with CacheClient(served.unix_url, ClientOptions(device="cuda")) as c:
        assert c.put(blocks) == 12
        tiers = c.lookup(keys_of(blocks))
        got = c.get_mapped(keys_of(blocks))
        assert all(isinstance(g, Mapped) for g in got)
        assert [g.slab.name for g in got] == tiers  # each where lookup said
        in_hbm = [i for i, t in enumerate(tiers) if t == "hbm"]
        assert in_hbm and all(got[i].slab.on_gpu for i in in_hbm)
        pages = torch.zeros(12, 200_000, dtype=torch.uint8, device="cuda")
        load = PageLoader("cuda").load(list(pages), got)
        load.wait()
        assert load.whole() == [True] * 12
        assert [bytes(page.cpu().numpy()) for page in pages] == [b[3] for b in blocks]
        # Deleted after it was located: its generation moved, so a copy would be refused.
        victim = got[in_hbm[0]]
        assert c.delete([blocks[in_hbm[0]][0]]) == 1
        assert victim.slab.check([victim.location]).tolist() == [False]
    served.stop()
    assert "the HBM tier on the same GPU (CUDA IPC)" in served.output
