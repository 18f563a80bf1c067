"""Cache hits into KV pages (``PageLoader``) against a real ``kvtier serve``: blocks copied
straight out of the service's shared slab (on a GPU: DMA from the registered mapping),
blocks that arrived inline, and the seqlock check after the copy."""

from __future__ import annotations

import pytest
import torch

from clients.cache_client import CacheClient
from clients.shared import Mapped
from engine.runtime.page_loader import PageLoader
from tests.cacheserver.blocks import chain, keys_of
from tiers import sharedmem

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
pytestmark = pytest.mark.skipif(not sharedmem.supported(), reason="shared memory needs x86-64 Linux")


def pages(device: str, n: int, size: int) -> list[torch.Tensor]:
    return list(torch.zeros(n, size, dtype=torch.uint8, device=device).unbind())


@pytest.mark.parametrize("device", DEVICES)
def test_mapped_and_inline_blocks_land_whole_in_their_pages(served, device):
    blocks = chain("load", 4, size=96_000)
    with CacheClient(served.data_url) as tcp, CacheClient(served.unix_url) as unix:
        assert tcp.put(blocks) == 4
        mapped, inline = unix.get_mapped(keys_of(blocks)), tcp.get(keys_of(blocks))
        assert all(isinstance(m, Mapped) for m in mapped)
        assert unix.counters.bytes_received < 1_000  # only where they lie came over the socket
        loader = PageLoader(device)
        dest = pages(device, 8, 96_000)
        load = loader.load(dest, [*mapped, *inline])
        load.wait()
        assert load.done() and load.whole() == [True] * 8
        want = [b[3] for b in blocks] * 2
        assert [bytes(p.cpu().numpy()) for p in dest] == want
        assert unix.counters.mapped_bytes == 4 * 96_000 and unix.counters.stale_blocks == 0
        if device == "cuda":  # the service's mapping is registered: copies out of it are DMAs
            assert loader._host(mapped[0].slab).is_pinned()


@pytest.mark.parametrize("device", DEVICES)
def test_a_block_moved_before_its_copy_is_checked_is_refused(served, device):
    """Located, then freed by the service and its pages written with another block, then
    copied: the copy holds the other block's bytes, and the check refuses it."""
    old, new = chain("old", 1, size=65_536)[0], chain("new", 1, size=65_536)[0]
    with CacheClient(served.data_url) as tcp, CacheClient(served.unix_url) as unix:
        assert tcp.put([old]) == 1
        [where] = unix.get_mapped([old[0]])
        assert tcp.delete([old[0]]) == 1 and tcp.put([new]) == 1
        [moved] = unix.get_mapped([new[0]])
        assert moved.location.offset == where.location.offset  # the new block took the freed pages
        dest = pages(device, 2, 65_536)
        load = PageLoader(device).load(dest, [where, moved])
        load.wait()
        assert load.whole() == [False, True]
        assert bytes(dest[0].cpu().numpy()) == new[3]  # what the stale copy read: never used
        assert unix.counters.stale_blocks == 1


def test_a_slab_from_a_restarted_service_replaces_the_old_one(served):
    """After a restart the client maps the new slab; the loader serves from it and lets the
    old mapping go with the old slab (no mapping kept alive past its last block)."""
    blocks = chain("restart", 2, size=50_000)
    loader = PageLoader("cpu")
    with CacheClient(served.unix_url) as unix:
        assert unix.put(blocks) == 2
        first = unix.get_mapped(keys_of(blocks))
        assert loader.load(pages("cpu", 2, 50_000), first).whole() == [True, True]
        old_slab = first[0].slab
        served.restart()  # DRAM goes to flash: the new service serves these inline
        assert unix.put(chain("after", 1, size=50_000)) == 1
        [again] = unix.get_mapped(keys_of(chain("after", 1, size=50_000)))
        assert isinstance(again, Mapped) and again.slab is not old_slab
        dest = pages("cpu", 1, 50_000)
        assert loader.load(dest, [again]).whole() == [True]
        assert bytes(dest[0].numpy()) == chain("after", 1, size=50_000)[0][3]
        del first, old_slab
        assert len(loader._hosts) == 1
