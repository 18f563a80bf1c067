import pytest

from tiers import record
from tiers.base import make_block
from tiers.flash import FlashTier

PARENT = bytes(range(16))


def test_record_roundtrip_and_header():
    rec = record.encode(PARENT, 7, b"payload")
    assert len(rec) == record.HEADER_SIZE + 7
    assert record.decode_header(rec)[:3] == (PARENT, 7, 7)
    assert bytes(record.payload_of(rec)) == b"payload"
    assert record.encode(PARENT, 7, (b"pay", memoryview(b"lo"), b"ad")) == rec  # a payload in parts


@pytest.mark.parametrize("damage", ["magic", "payload", "truncate", "short"])
def test_record_damage_is_caught(damage):
    rec = bytearray(record.encode(PARENT, 1, b"x" * 100))
    if damage == "magic":
        rec[0] ^= 1
    elif damage == "payload":
        rec[-1] ^= 1
    elif damage == "truncate":
        rec = rec[:-1]
    else:
        rec = rec[:10]
    with pytest.raises(record.CorruptRecord):
        record.payload_of(bytes(rec))


def test_put_get_delete_scan(tmp_path):
    tier = FlashTier(str(tmp_path), 1 << 20)
    blocks = [make_block(bytes([i]) * 16, PARENT, i, bytes([i]) * 5000) for i in range(3)]
    tier.put_many(blocks)
    assert [tier.get(b.key) for b in blocks] == [b.payload for b in blocks]
    tier.delete_many([blocks[0].key])
    assert tier.get(blocks[0].key) is None
    tier.close()
    again = FlashTier(str(tmp_path), 1 << 20)
    found = sorted((s.key, s.depth, s.size) for s in again.scan())
    assert found == [(b.key, b.depth, 5000) for b in blocks[1:]]
    assert again.footprint(5000) == 8192 + 64


def test_map_grows_for_puts_within_max(tmp_path):
    tier = FlashTier(str(tmp_path), 64 << 20, map_size=1 << 20, max_map_size=16 << 20)
    tier.put_many([make_block(bytes([i]) * 16, PARENT, 0, b"z" * 100_000) for i in range(40)])
    assert 1 << 20 < tier.map_size <= 16 << 20


def test_a_large_batch_is_verified_and_copied_whole_and_a_corrupt_record_is_a_miss(tmp_path):
    # 12 blocks of 1 MiB: over tiers.parallel's threshold, so spread over its threads.
    tier = FlashTier(str(tmp_path), 64 << 20)
    blocks = [make_block(bytes([i]) * 16, PARENT, i, bytes([i]) * (1 << 20)) for i in range(12)]
    tier.put_many(blocks)
    bad = bytearray(record.encode(PARENT, 5, blocks[5].payload))
    bad[-1] ^= 1
    with tier._env.begin(write=True) as txn:
        txn.put(blocks[5].key, bytes(bad))
    keys = [b.key for b in blocks] + [b"\xee" * 16]
    dests = [memoryview(bytearray(1 << 20)) for _ in keys]
    sizes = tier.read_many_into(keys, dests)
    assert sizes == [1 << 20] * 5 + [-1] + [1 << 20] * 6 + [-1]
    for b, d, n in zip(blocks, dests, sizes, strict=False):
        assert n < 0 or bytes(d) == b.payload
    assert tier.corrupt_reads == 1 and not tier.contains(blocks[5].key)
