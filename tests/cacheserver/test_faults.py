"""Flash faults on a real ``kvtier serve``: a flash folder that cannot be opened at start,
and one that stops taking writes while the service runs (the kernel's file-size limit
set on the live process, so LMDB's commits fail with EFBIG as on a full disk). Either way
the service keeps serving from DRAM and says so in ``/v1/stats`` and in its log."""

from __future__ import annotations

import resource

from clients.cache_client import CacheClient
from tests.cacheserver.blocks import chain


def test_flash_that_cannot_be_opened_leaves_a_dram_only_service(serve_factory, tmp_path):
    not_a_folder = tmp_path / "flash-is-a-file"
    not_a_folder.write_text("in the way")
    served = serve_factory(flash_dir=str(not_a_folder))
    s = served.stats()
    assert s["degraded"] and not s["durable"]
    assert s["flash_status"]["state"] == "unavailable"
    assert str(not_a_folder) in s["flash_status"]["reason"]
    assert [t["name"] for t in s["tiers"]] == ["dram"]
    blocks = chain("dram-only", 3)
    with CacheClient(served.data_url) as c:
        assert c.put(blocks) == 3
        assert [bytes(g) for g in c.get([b[0] for b in blocks])] == [b[3] for b in blocks]
        assert c.counters.failures == 0
    served.stop()
    assert "DEGRADED" in served.output and "could not be opened" in served.output


def test_flash_that_stops_taking_writes_degrades_to_dram_and_recovers(serve_factory):
    served = serve_factory(dram_gb=0.002)  # 2 MiB of DRAM: puts past it demote to flash
    data_file = served.folder / "flash" / "data.mdb"
    with CacheClient(served.data_url) as c:
        assert c.put(chain("before", 64, size=65536)) == 64  # 4 MiB: half of it goes to flash
        assert served.stats()["flash_status"]["state"] == "ok"
        limit = data_file.stat().st_size
        resource.prlimit(served.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        after = chain("after", 64, size=65536)
        for i in range(0, 64, 8):  # batches DRAM can hold: it evicts, the demotions fail
            assert c.put(after[i : i + 8]) == 8  # acknowledged: DRAM took them
        s = served.stats()
        assert s["degraded"] and s["flash_status"]["state"] == "degraded"
        assert "File too large" in s["flash_status"]["reason"] and s["flash_status"]["write_errors"] > 0
        recent = after[-16:]  # the last 1 MiB is still in DRAM and served from there
        assert c.lookup([b[0] for b in recent]) == ["dram"] * 16
        assert [bytes(g) for g in c.get([b[0] for b in recent])] == [b[3] for b in recent]
        assert c.counters.failures == 0

        resource.prlimit(served.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert c.put(chain("healed", 32, size=65536)) == 32
        assert served.stats()["flash_status"]["state"] == "ok"
    served.stop()
    assert "flash: " in served.output and "not written" in served.output
