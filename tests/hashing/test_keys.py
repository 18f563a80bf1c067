import hashlib
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import xxhash

from hashing.keys import KEY_SIZE, BlockHasher, Namespace, block_keys, parse_key

TOKENS = list(range(40))

# The keys of tokens 0..39 in the default namespace with block size 16. They are the
# contract with every stored block and every other process: a change here orphans caches.
GOLDEN = ["c9e8087792c34251d1111e15ade325e2", "fa1be7e2e27ff7056373bc022b590525"]


def test_golden_keys():
    assert [k.hex() for k in block_keys(TOKENS, 16)] == GOLDEN


def test_definition_spelled_out():
    """key[i] = H(key[i-1] ‖ i as u64 LE ‖ tokens as u32 LE), root = H(namespace bytes)."""
    ns = Namespace("model-x", "bf16/L2", "lora-1", "tenant")
    hasher = BlockHasher(ns, 4)
    root = xxhash.xxh3_128_digest(ns.to_bytes(4))
    assert hasher.root == root
    tokens = [5, 6, 7, 8, 9, 10, 11, 12]
    k0 = xxhash.xxh3_128_digest(root + struct.pack("<Q4I", 0, 5, 6, 7, 8))
    k1 = xxhash.xxh3_128_digest(k0 + struct.pack("<Q4I", 1, 9, 10, 11, 12))
    assert hasher.keys(tokens) == [k0, k1]


def test_only_full_blocks_get_keys():
    hasher = BlockHasher(Namespace(), 16)
    assert hasher.keys(TOKENS[:15]) == []
    assert len(hasher.keys(TOKENS[:39])) == 2
    assert hasher.keys(TOKENS[:39]) == hasher.keys(TOKENS[:32])


def test_position_aware():
    hasher = BlockHasher(Namespace(), 4)
    block = [1, 2, 3, 4]
    at_0 = hasher.keys(block)[0]
    at_1 = hasher.keys([9, 9, 9, 9, *block])[1]
    after_other = hasher.keys([8, 8, 8, 8, *block])[1]
    assert len({at_0, at_1, after_other}) == 3


def test_chain_extension_matches_whole():
    hasher = BlockHasher(Namespace(), 4)
    whole = hasher.keys(TOKENS[:24])
    head = hasher.keys(TOKENS[:8])
    tail = hasher.keys(TOKENS[8:24], parent=head[-1], start_block=2)
    assert head + tail == whole


@pytest.mark.parametrize("field", ["model_id", "kv_layout", "adapter_id", "salt"])
def test_every_namespace_field_separates(field):
    base = Namespace("m", "l", "a", "s")
    other = Namespace(**{**vars(base), field: vars(base)[field] + "x"})
    assert BlockHasher(base, 4).keys(TOKENS[:4]) != BlockHasher(other, 4).keys(TOKENS[:4])


def test_namespace_fields_cannot_be_shifted_into_each_other():
    a = Namespace(model_id="ab", kv_layout="c")
    b = Namespace(model_id="a", kv_layout="bc")
    assert BlockHasher(a).root != BlockHasher(b).root


def test_block_size_is_part_of_namespace():
    assert BlockHasher(Namespace(), 4).root != BlockHasher(Namespace(), 8).root


def test_sha256_and_secret():
    ns = Namespace("smollm2", salt="tenant-a")
    plain = BlockHasher(ns, 4, "sha256").keys([7, 7, 7, 7])
    root = hashlib.sha256(ns.to_bytes(4)).digest()[:KEY_SIZE]
    assert plain == [hashlib.sha256(root + struct.pack("<Q4I", 0, 7, 7, 7, 7)).digest()[:16]]
    secret = BlockHasher(ns, 4, "sha256", secret=b"s3cret").keys([7, 7, 7, 7])
    other_secret = BlockHasher(ns, 4, "sha256", secret=b"other").keys([7, 7, 7, 7])
    xxh_secret = BlockHasher(ns, 4, secret=b"s3cret").keys([7, 7, 7, 7])
    assert len({plain[0], secret[0], other_secret[0], xxh_secret[0]}) == 4
    assert all(len(k) == KEY_SIZE for k in plain + secret + xxh_secret)


def test_numpy_and_list_inputs_agree():
    hasher = BlockHasher(Namespace(), 8)
    assert hasher.keys(np.arange(40, dtype=np.int64)) == hasher.keys(TOKENS)
    assert hasher.keys(np.arange(40, dtype=np.int32)) == hasher.keys(TOKENS)


@pytest.mark.parametrize("bad", [[-1, 2, 3, 4], [2**32, 1, 1, 1], [1.5, 2.0, 3.0, 4.0], [[1, 2], [3, 4]]])
def test_bad_tokens_are_rejected(bad):
    with pytest.raises(ValueError):
        BlockHasher(Namespace(), 4).keys(bad)


def test_bad_settings():
    with pytest.raises(ValueError, match="block_size"):
        BlockHasher(Namespace(), 0)
    with pytest.raises(ValueError, match="md5"):
        BlockHasher(Namespace(), 4, "md5")


def test_parse_key():
    key = block_keys(TOKENS, 16)[0]
    assert parse_key(key.hex()) == key
    with pytest.raises(ValueError, match="not hex"):
        parse_key("zz" * 16)
    with pytest.raises(ValueError, match="has 3 bytes"):
        parse_key("abcdef")


def test_identical_across_processes_and_hash_seeds():
    code = "from hashing.keys import *; print(' '.join(k.hex() for k in block_keys(list(range(40)), 16)))"
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        outputs.add(out.stdout.split()[0] + " " + out.stdout.split()[1])
    assert outputs == {" ".join(GOLDEN)}
