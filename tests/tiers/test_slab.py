import pytest

from tiers.base import Block, PayloadSizeError, make_block
from tiers.extents import ExtentAllocator
from tiers.slab import SlabTier, dram_tier, hbm_tier

PAGE = 16


def blk(tag: int, size: int):
    return make_block(bytes([tag]) * 16, bytes(16), 0, bytes([tag]) * size)


def test_extents_best_fit_merge_and_spread_only_when_nothing_fits():
    pages = ExtentAllocator(16)
    a, b, c = pages.allocate(4), pages.allocate(2), pages.allocate(4)
    assert (a, b, c) == ([(0, 4)], [(4, 2)], [(6, 4)])
    pages.free(b)
    assert pages.allocate(1) == [(4, 1)]  # the 2-page hole fits best, not the 6-page tail
    pages.free([(4, 1)])
    pages.free(a)  # merges with the hole after it
    assert pages.extents() == [(0, 6), (10, 6)]
    pages.free(c)  # and everything is one extent again
    assert pages.extents() == [(0, 16)] and pages.free_pages == 16
    assert [pages.allocate(2) for _ in range(8)][::4] == [[(0, 2)], [(8, 2)]]
    pages.free([(2, 2), (6, 2), (10, 2)])
    assert pages.allocate(5) == [(2, 2), (6, 2), (10, 1)]  # nothing fits: spread, in page order
    assert pages.free_pages == 1


@pytest.mark.parametrize(("evict", "most_spread"), [("oldest", 0.2), ("random", 0.5)])
def test_mixed_sizes_churn_keeps_most_blocks_contiguous(evict, most_spread):
    """Blocks of two models (6 and 32 pages) into a slab kept nearly full, the oldest or a
    random block evicted until 32 pages are free: most blocks still get one run (handing
    out single free pages, over 90% of them were spread in both cases)."""
    import random

    rng = random.Random(0)
    tier = dram_tier(512 * PAGE, PAGE)
    live, spread = [], 0
    for tag in range(2000):
        b = make_block(tag.to_bytes(16, "little"), bytes(16), 0, bytes(rng.choice([6, 32]) * PAGE))
        while tier._free.free_pages < 32:
            tier.delete_many([live.pop(0 if evict == "oldest" else rng.randrange(len(live))).key])
        tier.put_many([b])
        live.append(b)
        spread += len(tier._blocks[b.key][1]) > 1
        assert tier.get(b.key) == b.payload
    assert spread < 2000 * most_spread


def test_pages_and_roundtrip():
    tier = dram_tier(8 * PAGE, PAGE)
    assert (tier.num_pages, tier.capacity_bytes) == (8, 128)
    assert tier.footprint(1) == PAGE and tier.footprint(17) == 2 * PAGE
    a, b = blk(1, 40), blk(2, 16)
    tier.put_many([a, b])
    assert tier.get(a.key) == a.payload and tier.get(b.key) == b.payload
    assert tier.contains(a.key) and tier.get(b"\x09" * 16) is None


def test_freed_run_is_reused_contiguously():
    tier = dram_tier(8 * PAGE, PAGE)
    a, b, c = blk(1, 3 * PAGE), blk(2, 2 * PAGE), blk(3, 3 * PAGE)
    tier.put_many([a, b])
    tier.delete_many([a.key])
    tier.put_many([c])
    assert tier._blocks[c.key][1] == [(0, 3)]  # a's run, in order


def test_fragmented_block_spans_runs_and_reads_back():
    tier = dram_tier(6 * PAGE, PAGE)
    parts = [blk(i, PAGE) for i in range(6)]
    tier.put_many(parts)
    tier.delete_many([parts[1].key, parts[3].key, parts[5].key])
    big = blk(9, 3 * PAGE - 5)
    tier.put_many([big])
    assert len(tier._blocks[big.key][1]) == 3  # three separate runs
    assert tier.get(big.key) == big.payload
    assert [tier.get(p.key) for p in parts[::2]] == [p.payload for p in parts[::2]]


def test_a_large_batch_reads_back_whole_one_run_and_several_runs_alike():
    # 1 MiB pages, 12 blocks: over tiers.parallel's threshold, so spread over its threads.
    page = 1 << 20
    tier = dram_tier(12 * page, page)
    parts = [blk(i, page - 7 * i) for i in range(12)]
    tier.put_many(parts)
    tier.delete_many([parts[1].key, parts[3].key])
    spread = blk(99, 2 * page - 5)  # only single pages are free: two runs
    tier.put_many([spread])
    assert len(tier._blocks[spread.key][1]) == 2
    blocks = [parts[0], spread, *parts[2:3], *parts[4:]]
    keys = [b.key for b in blocks]
    keys.insert(3, b"\xee" * 16)
    dests = [memoryview(bytearray(2 * page)) for _ in keys]
    sizes = tier.read_many_into(keys, dests)
    expected = [b.size for b in blocks]
    expected.insert(3, -1)
    assert sizes == expected
    got = [bytes(d[:n]) for d, n in zip(dests, sizes, strict=True) if n >= 0]
    assert got == [b.payload for b in blocks]


def test_bad_sizes():
    tier = dram_tier(4 * PAGE, PAGE)
    with pytest.raises(PayloadSizeError, match="out of range"):
        tier.footprint(0)
    with pytest.raises(PayloadSizeError, match="out of range"):
        tier.footprint(5 * PAGE)
    with pytest.raises(ValueError, match="holds no page"):
        SlabTier("dram", 8, PAGE)


def test_hbm_needs_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by the gpu test")
    with pytest.raises(ValueError, match="CUDA"):
        hbm_tier(1 << 20)


@pytest.mark.gpu
def test_hbm_roundtrip_on_gpu():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tier = hbm_tier(8 * PAGE, PAGE)
    parts = [blk(i, PAGE) for i in range(4)]
    tier.put_many(parts)
    tier.delete_many([parts[1].key])
    big = blk(9, 2 * PAGE)
    tier.put_many([big])
    assert tier.get(big.key) == big.payload
    assert tier.get(parts[2].key) == parts[2].payload


@pytest.mark.parametrize("make", [dram_tier, pytest.param(hbm_tier, marks=pytest.mark.gpu)])
def test_a_payload_in_parts_lands_in_order_across_spread_runs(make):
    """A remote value read in two parts (head, tail) is copied into the pages as is, no
    join on the host: parts and runs end at different places, and the block reads back whole."""
    tier = make(8 * PAGE, PAGE)
    tier.put_many([blk(1, PAGE), blk(2, PAGE), blk(3, PAGE)])
    tier.delete_many([bytes([2]) * 16])  # a one-page hole: the next block is spread
    data = bytes(range(96))  # 6 pages: the hole and the 5 free at the end
    block = Block(bytes([9]) * 16, bytes(16), 0, (data[:37], memoryview(data[37:]), b""), len(data))
    tier.put_many([block])
    assert len(tier._blocks[block.key][1]) == 2  # two runs
    assert tier.get(block.key) == data


def test_get_into_locates_only_in_the_tiers_it_names():
    """GET sends from the DRAM slab only; GET_MAPPED names the slabs its client mapped.
    (A host slab named "hbm" stands in for the GPU one here.)"""
    from tiers.base import Location
    from tiers.store import TieredStore

    store = TieredStore([dram_tier(2 * PAGE, PAGE), SlabTier("hbm", 16 * PAGE, PAGE)])
    blocks = [blk(i, PAGE) for i in range(6)]
    assert store.put(blocks) == 6
    tiers = store.lookup([b.key for b in blocks])
    assert set(tiers) == {"dram", "hbm"}
    keys = [b.key for b in blocks]
    for names in ((), ("dram",), ("dram", "hbm")):
        served = store.lookup(keys)  # where each is read from (reads promote some to DRAM)
        got = store.get_into(keys, bytearray(6 * PAGE), locate=names)
        assert sum(isinstance(r, Location) for r in got) == sum(t in names for t in served)
        for r, tier, block in zip(got, served, blocks, strict=True):
            if isinstance(r, Location):
                assert r.tier == tier and r.tier in names
            else:
                assert bytes(r) == block.payload


@pytest.mark.gpu
def test_a_shared_hbm_slab_locates_and_exports_its_generations_and_an_ipc_handle():
    tier = hbm_tier(8 * PAGE, PAGE, shared=True)
    a = blk(1, 2 * PAGE)
    tier.put_many([a])
    [where] = tier.locate_many([a.key])
    assert where.tier == "hbm" and where.size == 2 * PAGE
    fds, layout = tier.share()
    try:
        assert len(fds) == 1 and len(layout["handle"]) == 64 and layout["device_uuid"]
        assert layout["num_pages"] == 8
    finally:
        for fd in fds:
            __import__("os").close(fd)
    assert tier.current([where]) == [True]
    tier.delete_many([a.key])
    assert tier.current([where]) == [False]
    assert tier.get(a.key) is None
    tier.close()
