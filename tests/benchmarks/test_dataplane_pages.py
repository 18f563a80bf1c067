"""``kvtier bench dataplane``'s page systems, small: one block size, 4 blocks a batch, 1
client, one 0.1 s round, against a real ``kvtier serve`` (no Redis)."""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack

import pytest

from benchmarks import dataplane
from tiers import sharedmem

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
PAGES = {"cpu": ("shm_pages", "socket_pages"), "cuda": ("shm_pages", "socket_pages", "ipc_pages")}
CEILING = {"cpu": ("memcpy",), "cuda": ("pinned_h2d", "d2d")}
pytestmark = pytest.mark.skipif(not sharedmem.supported(), reason="shared memory needs x86-64 Linux")


@pytest.mark.parametrize("device", DEVICES)
def test_page_systems_run_beside_the_copy_and_their_ratio_is_the_rates_quotient(tmp_path, device):
    parser = argparse.ArgumentParser()
    dataplane.add_arguments(parser)
    out = tmp_path / "dataplane.json"
    systems = ",".join((*PAGES[device], *CEILING[device]))
    args = parser.parse_args(["--device", device, "--systems", systems, "--sizes", "360KiB", "--batch", "4",
                              "--clients", "1", "--rounds", "1", "--round-s", "0.1", "--json", str(out)])
    assert dataplane.run(args) == 0
    report = json.loads(out.read_text())
    assert report["device"] == device and report["systems"] == [*PAGES[device], *CEILING[device]]
    cell = report["results"]["360KiB"]["1"]
    assert sorted(k[:-5] for k in cell if k.endswith("_gbps")) == sorted(report["systems"])
    assert all(cell[f"{s}_gbps"] > 0 for s in report["systems"])
    limit = CEILING[device][0]
    judged = report["verdict"]["360KiB"]
    for system in PAGES["cpu"]:
        assert judged[f"{system}_vs_{limit}"] == pytest.approx(
            cell[f"{system}_gbps"] / cell[f"{limit}_gbps"], abs=0.002)
    if device == "cuda":
        assert judged["shm_pages_vs_pinned_h2d_met"] == (judged["shm_pages_vs_pinned_h2d"] >= 0.80)
        ipc = cell["ipc_pages_gbps"] / cell["d2d_gbps"]
        assert judged["ipc_pages_vs_d2d"] == pytest.approx(ipc, abs=0.002)
        assert judged["ipc_pages_vs_d2d_met"] == (judged["ipc_pages_vs_d2d"] >= 0.50)
    assert "shm_pages" in dataplane.render(report)


@pytest.mark.parametrize("device", DEVICES)
def test_pages_hold_the_payloads_over_shared_memory_and_over_tcp(tmp_path, device):
    data = dataplane.Payloads(4, dataplane.SIZES["360KiB"])
    with ExitStack() as stack:
        tcp, unix = dataplane.start_kvtier(stack, str(tmp_path), dram_gb=0.05)
        for url, mapped in ((unix, True), (tcp, False)):
            [reader], made = dataplane.page_workers(url, 1, data, device)
            for page in reader.pages:
                page.zero_()
            reader()
            assert [bytes(p.cpu().numpy()) for p in reader.pages] == data.blocks
            # unix://: copied out of the shared slab (a block at setup, then two loads of 4); TCP: none
            assert reader.client.counters.mapped_bytes == (9 * data.size if mapped else 0)
            made[0].close()
