import pytest

from tiers.base import PayloadSizeError, make_block
from tiers.slab import SlabTier, _runs, dram_tier, hbm_tier

PAGE = 16


def blk(tag: int, size: int):
    return make_block(bytes([tag]) * 16, bytes(16), 0, bytes([tag]) * size)


def test_runs():
    assert _runs([0, 1, 2, 5, 6, 9]) == [(0, 3), (5, 2), (9, 1)]
    assert _runs([]) == []


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
