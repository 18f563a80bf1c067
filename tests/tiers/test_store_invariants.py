"""Random operations on a DRAM + flash store, keys repeated within and across calls: after
each one, the store's counts agree with what its tiers hold, and every read is right."""

import random

import pytest

from tests.tiers.conftest import BLOCK, PAGE, one
from tiers.base import Location, StoreError
from tiers.flash import FlashTier
from tiers.slab import dram_tier
from tiers.store import TieredStore

OPS = ("put", "put", "get", "get_located", "get_held", "delete", "pin", "unpin")


def agree(store: TieredStore, dram, flash) -> None:
    dram_stats, flash_stats = store.stats()["tiers"]
    used_pages = dram.num_pages - dram.describe()["free_pages"]
    assert dram_stats["used_bytes"] == used_pages * PAGE
    rows = store.list_blocks(limit=1_000)
    for row in rows:
        key = bytes.fromhex(row["key"])
        assert ("dram" in row["tiers"], "flash" in row["tiers"]) == (dram.contains(key), flash.contains(key))
    assert dram_stats["blocks"] == sum("dram" in r["tiers"] for r in rows)
    assert flash_stats["blocks"] == sum("flash" in r["tiers"] for r in rows)


@pytest.mark.parametrize("seed", range(4))
def test_counts_agree_with_the_tiers_after_every_operation(tmp_path, seed):
    rng = random.Random(seed)
    dram, flash = dram_tier(6 * PAGE, PAGE), FlashTier(str(tmp_path / "flash"), 12 * (4096 + 64))
    store = TieredStore([dram, flash], policy=("lru", "default")[seed % 2])
    names = [f"b{i}" for i in range(14)]
    for _ in range(300):
        op = rng.choice(OPS)
        blocks = [one(rng.choice(names)) for _ in range(rng.randint(1, 4))]
        keys = [b.key for b in blocks]
        try:
            if op == "put":
                store.put(blocks)
            elif op.startswith("get"):
                got = store.get_into(keys, bytearray(len(keys) * BLOCK),
                                     locate=() if op == "get" else ("dram",), hold=op == "get_held")
                for g, b in zip(got, blocks, strict=False):
                    if g is not None:
                        assert (b"".join(dram.view(g)) if isinstance(g, Location) else bytes(g)) == b.payload
                if op == "get_held":
                    store.release([k for k, g in zip(keys, got, strict=False) if isinstance(g, Location)])
            elif op == "delete":
                store.delete(keys)
            elif op == "pin":
                store.pin([k for k in keys if k in store], rng.choice(["dram", "flash"]))
            else:
                store.unpin([k for k in keys if k in store])
        except StoreError:  # full of pins: refused, and nothing changed
            pass
        agree(store, dram, flash)
    store.close(persist=False)
