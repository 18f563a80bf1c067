import threading
import time

import pytest

from tests.tiers.conftest import BLOCK, PAGE, chain, one, payload_for
from tiers.base import Block, Location, PayloadSizeError, StoreFullError, UnknownBlockError, make_block
from tiers.flash import FlashTier
from tiers.metadata import MetadataTier
from tiers.slab import dram_tier
from tiers.store import TieredStore


def keys_of(blocks):
    return [b.key for b in blocks]


def test_put_get_lookup_roundtrip(make_store):
    store = make_store(policy="lru", dram=8)
    blocks = chain("a", 4)
    assert store.put(blocks) == 4
    assert store.put(blocks) == 0  # present: only touched
    assert store.lookup(keys_of(blocks)) == ["dram"] * 4
    assert store.get(keys_of(blocks)) == [b.payload for b in blocks]
    assert store.stats()["hits"] == 4


def test_lookup_stops_at_first_missing(make_store):
    store = make_store(policy="lru", dram=8)
    blocks = chain("a", 4)
    store.put([blocks[0], blocks[1], blocks[3]])
    assert store.lookup(keys_of(blocks)) == ["dram", "dram"]
    assert store.get(keys_of(blocks))[2] is None


def test_lru_eviction_order_is_exact(make_store):
    store = make_store(policy="lru", dram=3)
    a, b, c, d, e = (one(n) for n in "abcde")
    store.put([a])
    store.put([b])
    store.put([c])
    store.get([a.key])  # a is now the most recent; b the least
    store.put([d])
    assert b.key not in store and {a.key, c.key, d.key} <= set(k for k in (a.key, c.key, d.key) if k in store)
    store.put([e])  # then c goes
    assert c.key not in store
    assert [k in store for k in (a.key, d.key, e.key)] == [True, True, True]
    assert store.stats()["tiers"][0]["evictions"] == 2


def test_chain_put_evicts_its_leaf_before_its_root(make_store):
    store = make_store(policy="lru", dram=3)
    root, mid, leaf = chain("c", 3)
    store.put([root, mid, leaf])
    store.put([one("x")])
    assert leaf.key not in store
    assert root.key in store and mid.key in store


def test_eviction_skips_blocks_with_children(make_store):
    store = make_store(policy="lru", dram=3)
    c0, c1, c2 = chain("c", 3)
    store.put([c0, c1])
    store.put([c2])  # the extension is now the most recent block; c1, c0 are older
    store.put([one("x")])
    assert c2.key not in store  # the leaf goes, not the ancestors it needs
    assert store.lookup([c0.key, c1.key]) == ["dram", "dram"]
    assert store.stats()["stranded"] == 0


def test_a_batch_eviction_takes_the_oldest_chains_tail_not_a_leaf_from_each_chain(make_store):
    store = make_store(policy="lru", dram=9)
    old, mid, new = chain("old", 3), chain("mid", 3), chain("new", 3)
    for c in (old, mid, new):  # least recent first
        store.put(c)
    store.put(chain("x", 2))  # room for two: the old chain's two deepest blocks go
    assert store.lookup(keys_of(old)) == ["dram"]
    assert store.lookup(keys_of(mid)) == ["dram"] * 3
    assert store.lookup(keys_of(new)) == ["dram"] * 3
    assert store.stats()["stranded"] == 0


def test_eviction_demotes_and_read_promotes(make_store):
    store = make_store(policy="lru", dram=2, flash=8)
    a, b, c = one("a"), one("b"), one("c")
    store.put([a])
    store.put([b])
    store.put([c])
    assert store.lookup([a.key]) == ["flash"]
    assert store.lookup([b.key]) == ["dram"]
    assert store.get([a.key]) == [a.payload]
    assert store.lookup([a.key]) == ["dram"]  # promoted; b was demoted to make room
    assert store.lookup([b.key]) == ["flash"]
    dram, flash = store.stats()["tiers"]
    assert (dram["promotions"], dram["evictions"], flash["demotions"], flash["hits"]) == (1, 2, 2, 1)
    assert (dram["misses"], flash["misses"]) == (1, 0)


def test_promotion_cascade_never_evicts_the_promoted_block(make_store):
    store = make_store(policy="lru", dram=1, flash=1)
    a, b = one("a"), one("b")
    store.put([a])
    store.put([b])  # a demoted to flash, which is now full
    assert store.get([a.key]) == [a.payload]
    # Promoting a pushed b down; flash had no room but a's copy, which is protected: b goes.
    assert store.info(a.key)["tiers"] == ["dram", "flash"]
    assert b.key not in store
    assert store.stats()["dropped"] == 1


def test_get_into_copies_into_the_arena(make_store):
    store = make_store(policy="lru", dram=2, flash=4)
    blocks = chain("g", 3)
    store.put(blocks)
    arena = bytearray(2 * BLOCK + 10)
    views = store.get_into([blocks[0].key, one("absent").key, blocks[1].key, blocks[2].key], arena)
    assert len(views) == 3  # the third hit does not fit: stop before it
    assert views[1] is None
    assert bytes(views[0]) == blocks[0].payload and bytes(views[2]) == blocks[1].payload
    assert bytes(arena[: 2 * BLOCK]) == blocks[0].payload + blocks[1].payload


def test_a_read_locates_what_it_promotes_and_evicts_nothing_it_located(tmp_path):
    """A flash hit promoted into the located DRAM tier answers where it now lies (a same-host
    client copies it from there); the promotion may not evict the read's own DRAM hits."""
    dram = dram_tier(2 * PAGE, PAGE)
    store = TieredStore([dram, FlashTier(str(tmp_path / "flash"), 8 * (4096 + 64))], policy="lru")
    a, b, c, d, e, f = (one(n) for n in "abcdef")
    for block in (a, b, c, d):
        store.put([block])  # a and b demoted to flash; DRAM holds c and d
    got = store.get_into([a.key, c.key, d.key], bytearray(3 * BLOCK), locate=("dram",))
    assert [type(g) for g in got] == [memoryview, Location, Location]  # no room for a
    assert bytes(got[0]) == a.payload and store.lookup([a.key]) == ["flash"]
    got = store.get_into([a.key], bytearray(BLOCK), locate=("dram",))
    assert isinstance(got[0], Location) and store.lookup([a.key]) == ["dram"]
    assert b"".join(dram.view(got[0])) == a.payload
    assert bytes(store.get_into([b.key], bytearray(BLOCK))[0]) == b.payload  # nothing located
    store.put([e, f])  # the reads held nothing past themselves: both DRAM blocks make room
    assert store.lookup([e.key, f.key]) == ["dram"] * 2
    store.close(persist=False)


def _dram_and_flash(folder, dram_pages: int):
    dram = dram_tier(dram_pages * PAGE, PAGE)
    return dram, TieredStore([dram, FlashTier(str(folder), 16 * (4096 + 64))], policy="lru")


def test_a_promoted_flash_hit_is_read_straight_into_its_dram_pages(tmp_path):
    """With DRAM located, a flash hit is read into the pages its promotion takes, none of
    it into the arena; a block that lands in two runs goes through the arena and whole."""
    dram, store = _dram_and_flash(tmp_path / "flash", 4)
    wide = make_block(one("w").key, one("p").key, 0, bytes(range(256)) * 7 + b"w" * 208)  # 2 pages
    x, y, z = one("x"), one("y"), one("z")
    for block in (wide, x, y, z):
        store.put([block])  # z evicts wide (2 pages) to flash, and takes the first of them
    store.delete([y.key])  # the free pages are two runs now: wide's second one, and y's
    assert store.lookup([wide.key]) == ["flash"]
    arena = bytearray(b"\xee" * 3000)
    [where] = store.get_into([wide.key], arena, locate=("dram",))
    assert len(where.segments) == 2 and b"".join(dram.view(where)) == wide.payload
    store.close(persist=False)

    dram, store = _dram_and_flash(tmp_path / "flash2", 2)
    a, b, c = one("a"), one("b"), one("c")
    for block in (a, b, c):
        store.put([block])  # a evicted to flash
    arena[:] = b"\xee" * 3000
    [where] = store.get_into([a.key], arena, locate=("dram",))
    assert b"".join(dram.view(where)) == a.payload and store.lookup([a.key, b.key]) == ["dram", "flash"]
    assert arena == bytearray(b"\xee" * 3000)  # one run: from flash straight into its page
    assert store.stats()["tiers"][0]["promotions"] == 1
    store.close(persist=False)


@pytest.mark.parametrize("locate", [(), ("dram",)], ids=["copied", "located"])
def test_a_read_naming_a_flash_block_twice_promotes_it_once(tmp_path, locate):
    dram, store = _dram_and_flash(tmp_path / "flash", 4)
    blocks = [one(n) for n in "abcde"]  # a ends in flash, DRAM full
    for block in blocks:
        store.put([block])
    got = store.get_into([blocks[0].key] * 2, bytearray(2 * BLOCK), locate=locate)
    assert len(got) == 2 and all(g is not None for g in got)
    stats = store.stats()["tiers"][0]
    assert (stats["blocks"], stats["used_bytes"], stats["promotions"]) == (4, 4 * PAGE, 1)
    assert dram.describe()["free_pages"] == 0  # the count and the slab agree
    store.close(persist=False)


def test_a_flash_record_that_fails_its_checksum_leaves_no_dram_page_behind(tmp_path):
    dram, store = _dram_and_flash(tmp_path / "flash", 2)
    a = make_block(one("a").key, one("p").key, 0, b"\xab" * 600 + b"\xcd" * 400)
    store.put([a])
    store.close()  # persists a to flash
    data = tmp_path / "flash" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[raw.find(b"\xab" * 600) + 100] ^= 0x01
    data.write_bytes(bytes(raw))
    dram, store = _dram_and_flash(tmp_path / "flash", 2)
    assert store.get_into([a.key], bytearray(BLOCK), locate=("dram",)) == [None]
    assert a.key not in store and store.stats()["checksum_failures"] == 1
    dram_stats = store.stats()["tiers"][0]
    assert (dram_stats["blocks"], dram_stats["used_bytes"], dram_stats["promotions"]) == (0, 0, 0)
    assert dram_stats["bytes_in"] == 0
    assert dram.describe()["free_pages"] == 2
    store.close(persist=False)


def test_write_through_puts_in_both_tiers(make_store):
    store = make_store(policy="lru", dram=4, flash=4, write_through=True)
    blocks = chain("w", 2)
    store.put(blocks)
    assert [store.info(k)["tiers"] for k in keys_of(blocks)] == [["dram", "flash"]] * 2


def test_drop_from_last_tier(make_store):
    store = make_store(policy="lru", dram=1, flash=1)
    a, b, c = one("a"), one("b"), one("c")
    for blk in (a, b, c):
        store.put([blk])
    assert a.key not in store
    assert store.stats()["dropped"] == 1


def test_pinned_block_is_never_evicted_and_full_of_pins_is_an_error(make_store):
    store = make_store(policy="lru", dram=2)
    a, b, c = one("a"), one("b"), one("c")
    store.put([a, b])
    assert store.pin([a.key, b.key]) == 2
    with pytest.raises(StoreFullError, match="pinned"):
        store.put([c])
    assert store.get([a.key, b.key]) == [a.payload, b.payload]  # nothing lost
    assert c.key not in store
    assert store.stats()["rejected_full"] == 1
    store.unpin([b.key])
    store.put([c])
    assert b.key not in store and a.key in store and c.key in store


def test_pin_copies_into_the_named_tier(make_store):
    store = make_store(policy="lru", dram=1, flash=4)
    a, b = one("a"), one("b")
    store.put([a])
    store.put([b])  # a demoted to flash
    store.pin([a.key], tier="dram")
    assert store.info(a.key)["pinned"] == "dram"
    assert "dram" in store.info(a.key)["tiers"]
    with pytest.raises(UnknownBlockError):
        store.pin([one("zzz").key])
    with pytest.raises(ValueError, match="hbm"):
        store.pin([a.key], tier="hbm")


def test_pin_ttl_lapses(make_store, monkeypatch):
    import tiers.store as store_module

    now = [1000.0]
    monkeypatch.setattr(store_module.time, "monotonic", lambda: now[0])
    store = make_store(policy="lru", dram=1)
    a, b = one("a"), one("b")
    store.put([a])
    store.pin([a.key], ttl=5)
    with pytest.raises(StoreFullError):
        store.put([b])
    now[0] += 6
    store.put([b])
    assert a.key not in store and b.key in store


def test_bad_input_changes_nothing(make_store):
    store = make_store(policy="lru", dram=2)
    a = one("a")
    store.put([a])
    with pytest.raises(PayloadSizeError, match="out of range"):
        store.put([make_block(one("big").key, a.key, 1, b"x" * 5000)])
    with pytest.raises(ValueError, match="16 bytes"):
        store.put([make_block(b"short", a.key, 1, b"x")])
    with pytest.raises(ValueError, match="disagrees"):
        store.put([Block(one("q").key, a.key, 1, b"xy", 3)])
    with pytest.raises(PayloadSizeError):  # one bad block rejects the batch before any change
        store.put([one("ok"), make_block(one("e").key, a.key, 1, b"")])
    assert len(store) == 1 and store.get([a.key]) == [a.payload]


def test_delete_and_clear(make_store):
    store = make_store(policy="lru", dram=4, flash=4)
    blocks = chain("d", 3)
    store.put(blocks)
    store.pin([blocks[0].key])
    assert store.delete([blocks[2].key, one("absent").key]) == 1
    assert store.clear() == 1  # the pinned block stays
    assert len(store) == 1
    assert store.clear(include_pinned=True) == 1
    assert len(store) == 0
    assert all(t["used_bytes"] == 0 and t["blocks"] == 0 for t in store.stats()["tiers"])


def test_restart_finds_flash_blocks(make_store):
    store = make_store(policy="lru", dram=2, flash=8, folder="persist")
    blocks = chain("r", 5)
    store.put(blocks)
    store.close()  # persists what only DRAM held
    again = make_store(policy="lru", dram=2, flash=8, folder="persist")
    assert again.lookup(keys_of(blocks)) == ["flash"] * 5
    assert again.get(keys_of(blocks)) == [b.payload for b in blocks]
    assert again.info(blocks[1].key)["children"] == 1
    assert again.info(blocks[1].key)["depth"] == 1


def test_flipped_byte_is_a_miss_and_is_deleted(make_store, tmp_path):
    store = make_store(policy="lru", dram=1, flash=4, folder="corrupt")
    a = make_block(one("a").key, one("p").key, 0, b"\xab" * 600 + b"\xcd" * 400)
    store.put([a])
    store.close()
    data = tmp_path / "corrupt" / "data.mdb"
    raw = bytearray(data.read_bytes())
    at = raw.find(b"\xab" * 600)
    assert at > 0
    raw[at + 100] ^= 0x01
    data.write_bytes(bytes(raw))
    again = make_store(policy="lru", dram=1, flash=4, folder="corrupt")
    assert again.lookup([a.key]) == ["flash"]
    assert again.get([a.key]) == [None]
    assert a.key not in again
    assert again.stats()["checksum_failures"] == 1
    assert again.lookup([a.key]) == []


def test_full_lmdb_map_means_eviction_not_errors(make_store):
    # Counted capacity far above what the map may grow to: LMDB fills first.
    store = make_store(policy="lru", dram=1, flash=4096, map_size=1 << 20, max_map_size=2 << 20)
    blocks = [one(f"m{i}") for i in range(2000)]
    for blk in blocks:
        store.put([blk])
    flash = store.stats()["tiers"][1]
    assert flash["write_errors"] == 0
    assert flash["evictions"] > 0
    assert store.get([blocks[-1].key]) == [blocks[-1].payload]


def test_many_threads_put_and_get(make_store):
    store = make_store(policy="lru", dram=16, flash=64)
    errors = []

    def worker(t):
        try:
            for i in range(30):
                blocks = chain(f"t{t}-{i % 7}", 3)
                store.put(blocks)
                for got, blk in zip(store.get(keys_of(blocks)), blocks, strict=True):
                    assert got is None or got == blk.payload
                store.lookup(keys_of(chain(f"t{(t + 1) % 8}-{i % 7}", 3)))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    stats = store.stats()
    for tier in stats["tiers"]:
        assert tier["used_bytes"] <= tier["capacity_bytes"]
    # Every block the store still holds reads back intact (each read promotes, which may
    # push another listed block out of the last tier, so check presence first).
    verified = 0
    for row in store.list_blocks(limit=10_000):
        key = bytes.fromhex(row["key"])
        if key in store:
            assert store.get([key]) == [payload_for(key)]
            verified += 1
    assert verified >= 64


def test_metadata_only_mode_counts_sizes_without_bytes():
    store = TieredStore([MetadataTier("dram", 3 * BLOCK), MetadataTier("flash", 10 * BLOCK)], policy="lru")
    blocks = [Block(b.key, b.parent, b.depth, None, BLOCK) for b in chain("m", 6)]
    store.put(blocks)
    # A batch never evicts its own blocks: the first three fill DRAM, the rest go below.
    assert store.lookup(keys_of(blocks)) == ["dram"] * 3 + ["flash"] * 3
    store.get(keys_of(blocks)[3:5])
    assert store.stats()["tiers"][1]["hits"] == 2
    assert store.stats()["tiers"][0]["used_bytes"] == 3 * BLOCK


def test_listing_filters(make_store):
    store = make_store(policy="lru", dram=2, flash=4)
    a, b, c = one("a"), one("b"), one("c")
    for blk in (a, b, c):
        store.put([blk])
    store.pin([c.key])
    assert [r["key"] for r in store.list_blocks(tier="flash")] == [a.key.hex()]
    assert [r["key"] for r in store.list_blocks(pinned=True)] == [c.key.hex()]
    assert len(store.list_blocks(offset=1, limit=1)) == 1


def test_put_never_evicts_blocks_of_its_own_batch(make_store):
    store = make_store(policy="lru", dram=4)
    a, b = one("a"), one("b")
    store.put([a, b])
    store.pin([a.key, b.key])
    blocks = chain("c", 4)
    with pytest.raises(StoreFullError, match="2 of 4"):
        store.put(blocks)
    assert [blk.key in store for blk in blocks] == [True, True, False, False]
    assert store.get(keys_of(blocks[:2])) == [blk.payload for blk in blocks[:2]]
    assert store.get([a.key, b.key]) == [a.payload, b.payload]


def test_a_batch_larger_than_the_store_keeps_its_head(make_store):
    store = make_store(policy="lru", dram=3)
    blocks = chain("long", 5)
    assert store.put(blocks) == 3
    assert store.lookup(keys_of(blocks)) == ["dram"] * 3
    assert store.stats()["oversize"] == 2


def test_a_policy_learns_in_a_background_thread_without_the_store_lock(make_store, monkeypatch):
    from tiers.policy import LRUPolicy
    from tiers.registry import POLICIES

    entered, release = threading.Event(), threading.Event()

    class SlowLearner(LRUPolicy):
        learns = True

        def learn(self, limit: int | None = None) -> bool:
            entered.set()
            release.wait(10)
            return False

    monkeypatch.setitem(POLICIES, "slow-learner", SlowLearner)
    store = make_store(policy="slow-learner", dram=8)
    blocks = chain("a", 4)
    store.lookup(keys_of(blocks))
    assert entered.wait(10)
    # the learner is stuck in learn(): every operation still goes through
    assert store.put(blocks) == 4 and store.lookup(keys_of(blocks)) == ["dram"] * 4
    assert store.get(keys_of(blocks)) == [b.payload for b in blocks]
    assert not release.is_set()
    release.set()


def test_adaptive_in_a_store_replays_each_looked_up_request_once(make_store):
    inline = make_store(policy="adaptive", dram=8, learn_inline=True)
    background = make_store(policy="adaptive", dram=8)
    requests = [chain("a", 2), chain("b", 3), chain("a", 4), chain("c", 1)]
    for store in (inline, background):
        for blocks in requests:
            store.lookup(keys_of(blocks))
            store.put(blocks)
    assert inline.stats()["tiers"][0]["policy_stats"]["replays"] == 3  # the first had nothing before it
    deadline = time.monotonic() + 10
    while background.stats()["tiers"][0]["policy_stats"]["replays"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert background.stats()["tiers"][0]["policy_stats"] == inline.stats()["tiers"][0]["policy_stats"]
