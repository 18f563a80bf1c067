"""The store over a flash tier that stops writing (a full disk): evictions and deletes
that cannot reach flash are counted and logged, never raised; and in durable mode
(``write_through``) a put flash did not take is refused, never acknowledged.

The disk fills for real: the file-size limit of this process (``RLIMIT_FSIZE``) is set to
the LMDB file's size, so every commit that needs to write past it, puts and deletes alike,
fails with EFBIG as on a full disk (Python ignores the SIGXFSZ that comes with it)."""

from __future__ import annotations

import os
import resource

import pytest

from tests.tiers.conftest import PAGE, chain, one
from tiers.flash import FlashTier
from tiers.slab import dram_tier
from tiers.store import NotDurableError, TieredStore


@pytest.fixture
def two_tiers(tmp_path):
    """``build(policy=..., dram=..., flash=..., **store_settings)``: a store of ``dram`` and
    ``flash`` blocks evicting by ``policy``, and its flash tier."""
    stores = []

    def build(*, policy: str, dram: int, flash: int, **settings) -> tuple[TieredStore, FlashTier]:
        tier = FlashTier(str(tmp_path / f"flash{len(stores)}"), flash * 4096 + flash * 64)
        store = TieredStore([dram_tier(dram * PAGE, PAGE), tier], policy=policy, **settings)
        stores.append(store)
        return store, tier

    yield build
    heal()
    for s in stores:
        s.close(persist=False)


_NO_LIMIT = resource.getrlimit(resource.RLIMIT_FSIZE)


def break_writes(tier: FlashTier) -> None:
    """Fill the disk under ``tier``: no file of this process may grow past its LMDB file."""
    size = os.path.getsize(os.path.join(tier.path, "data.mdb"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, _NO_LIMIT[1]))


def heal() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, _NO_LIMIT)


def flash_stats(store: TieredStore) -> dict:
    return next(t for t in store.stats()["tiers"] if t["name"] == "flash")


def test_evictions_and_deletes_on_a_broken_flash_degrade_and_finish_after_it_heals(two_tiers):
    store, flash = two_tiers(policy="lru", dram=2, flash=2)
    a, b, c, d, e, f = (one(n) for n in "abcdef")
    for blk in (a, b, c, d):
        store.put([blk])
    assert [store.info(k.key)["tiers"] for k in (a, b, c, d)] == [["flash"], ["flash"], ["dram"], ["dram"]]

    break_writes(flash)
    assert store.put([e]) == 1  # c is evicted from DRAM; making room for it in flash evicts a,
    # whose delete fails (counted, not raised), and c's write fails too
    assert a.key not in store and c.key not in store  # a forgotten, c dropped (not demoted)
    assert store.delete([b.key]) == 1 and b.key not in store  # a delete the same
    assert store.get([d.key, e.key]) == [d.payload, e.payload]  # DRAM keeps serving
    s = flash_stats(store)
    assert (s["delete_errors"], s["write_errors"]) == (2, 1)
    assert "File too large" in s["write_problem"]
    assert flash.contains(a.key) and flash.contains(b.key)  # their bytes are still there

    heal()
    assert store.put([f]) == 1  # e is demoted: flash writes again, and the deletes finish
    assert flash_stats(store)["write_problem"] == ""
    assert not flash.contains(a.key) and not flash.contains(b.key)
    assert store.info(e.key)["tiers"] == ["flash"]


def test_a_block_written_again_is_spared_by_the_deletes_owed(two_tiers):
    store, flash = two_tiers(policy="lru", dram=4, flash=4, write_through=True)
    a = one("a")
    store.put([a])
    break_writes(flash)
    assert store.delete([a.key]) == 1  # flash still holds its bytes: a delete is owed
    heal()
    assert store.put([a]) == 1  # the first good write is a itself: it no longer owes one
    assert flash.contains(a.key) and store.info(a.key)["tiers"] == ["dram", "flash"]


def test_durable_mode_refuses_a_put_flash_did_not_take(two_tiers):
    store, flash = two_tiers(policy="lru", dram=4, flash=4, write_through=True)
    blocks = chain("w", 2)
    break_writes(flash)
    with pytest.raises(NotDurableError, match=r"2 of 2 blocks were not stored.*File too large"):
        store.put(blocks)
    assert all(blk.key not in store for blk in blocks)  # not even in DRAM: nothing half-kept
    assert store.stats()["not_durable"] == 2 and store.stats()["puts"] == 0

    heal()
    assert store.put(blocks) == 2  # a retry writes them through
    assert [store.info(blk.key)["tiers"] for blk in blocks] == [["dram", "flash"]] * 2


def test_durable_mode_writes_a_held_block_through_again(two_tiers):
    store, flash = two_tiers(policy="lru", dram=4, flash=2, write_through=True)
    a, b, c = one("a"), one("b"), one("c")
    for blk in (a, b, c):
        store.put([blk])
    assert store.info(a.key)["tiers"] == ["dram"]  # evicted from the full flash, still in DRAM
    assert store.put([a]) == 0  # present, so not new: but written through again
    assert store.info(a.key)["tiers"] == ["dram", "flash"] and flash.contains(a.key)


def test_durable_mode_without_a_persistent_tier_refuses_every_put():
    store = TieredStore([dram_tier(4 * PAGE, PAGE)], policy="lru", write_through=True)
    with pytest.raises(NotDurableError, match="no persistent tier"):
        store.put([one("a")])
    assert len(store) == 0
