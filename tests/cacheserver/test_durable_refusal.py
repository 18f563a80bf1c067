"""Durable mode (``kvtier serve --flash-sync``) on a real service whose flash cannot take
a put: the put is refused with ``NOT_DURABLE``, never acknowledged, and counted; the
service keeps answering, and takes puts again once flash does."""

from __future__ import annotations

import resource

from cacheserver import protocol as p
from clients.cache_client import CacheClient
from tests.cacheserver.blocks import chain


def test_durable_mode_refuses_puts_when_flash_stops_taking_writes(serve_factory):
    served = serve_factory(flash_sync=True, dram_gb=0.01)
    data_file = served.folder / "flash" / "data.mdb"
    before = chain("before", 8, size=65536)
    with CacheClient(served.data_url) as c:
        assert c.put(before) == 8 and c.counters.failures == 0
        resource.prlimit(served.pid, resource.RLIMIT_FSIZE, (data_file.stat().st_size,
                                                            resource.RLIM_INFINITY))
        during = chain("during", 8, size=65536)
        assert c.put(during) is None  # refused: the client's fallback, as for any error reply
        assert c.counters.server_errors == 1
        assert c.lookup([b[0] for b in during]) == []  # not kept half-stored in DRAM either
        assert [bytes(g) for g in c.get([b[0] for b in before])] == [b[3] for b in before]
        s = served.stats()
        assert s["not_durable"] == 8 and s["data_plane"]["errors"] == {"NOT_DURABLE": 1}
        assert s["flash_status"]["state"] == "degraded"

        resource.prlimit(served.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert c.put(during) == 8  # a retry, once flash writes again
        assert served.stats()["flash_status"]["state"] == "ok"
    served.stop()
    assert "flash: " in served.output and "not written" in served.output


def test_durable_mode_without_flash_refuses_every_put(serve_factory, tmp_path):
    not_a_folder = tmp_path / "flash-is-a-file"
    not_a_folder.write_text("in the way")
    served = serve_factory(flash_dir=str(not_a_folder), flash_sync=True)
    s = served.stats()
    assert s["degraded"] and not s["durable"] and s["flash_status"]["state"] == "unavailable"
    with CacheClient(served.data_url) as c:
        assert c.put(chain("nowhere", 2)) is None and c.counters.server_errors == 1
        assert c.ping() and c.counters.failures == 1  # the service still answers
    assert served.stats()["data_plane"]["errors"] == {p.Status.NOT_DURABLE.name: 1}
    served.stop()
    assert "every put is refused (NOT_DURABLE)" in served.output
