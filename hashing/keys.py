"""Position-aware block keys.

A KV block is named by a chained hash over token blocks::

    root   = H(namespace bytes)
    key[i] = H(key[i-1] ‖ i ‖ tokens of block i)      (key[-1] = root)

with ``i`` as little-endian uint64 and the tokens as little-endian uint32. A key therefore
encodes the whole prefix before it and its absolute position: the same 16 tokens at another
offset, or after another prefix, get another key. Only full blocks get keys.

``H`` is xxh3-128 by default (16-byte keys). ``sha256`` (truncated to 16 bytes, so every
key has the same size) is the choice for deployments that serve mutually distrustful
tenants, together with a secret seed. Nothing here depends on process state: the same
tokens give the same keys in every process, on every host, after restarts.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

KEY_SIZE = 16
HASH_ALGORITHMS = ("xxh3_128", "sha256")
_MAX_TOKEN = 2**32 - 1


@dataclass(frozen=True)
class Namespace:
    """Everything that makes two KV blocks incompatible.

    ``model_id`` is the model fingerprint (a hash of the weights file), ``kv_layout`` the
    KV dtype and shape (e.g. ``"bfloat16/L30/H3/D64"``), ``adapter_id`` the LoRA or adapter,
    ``salt`` the tenant. The block size is part of the namespace too, so keys made with
    another block size never collide with these.
    """

    model_id: str = ""
    kv_layout: str = ""
    adapter_id: str = ""
    salt: str = ""

    def to_bytes(self, block_size: int) -> bytes:
        fields = (
            "kvtier-ns-v1",
            f"model={self.model_id}",
            f"layout={self.kv_layout}",
            f"adapter={self.adapter_id}",
            f"salt={self.salt}",
            f"block_size={block_size}",
        )
        # Length-prefix each field so no two namespaces serialise to the same bytes.
        return b"".join(len(f).to_bytes(4, "little") + f.encode() for f in fields)


def read_secret(path: str | None) -> bytes | None:
    """A deployment's secret hash seed from a file (surrounding whitespace ignored)."""
    if path is None:
        return None
    with open(path, "rb") as f:
        secret = f.read().strip()
    if not secret:
        raise ValueError(f"the hash secret file {path} is empty")
    return secret


def parse_key(text: str) -> bytes:
    """A key from its hex form, or ``ValueError`` saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"a block key must be a hex string, got {type(text).__name__}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"block key {text[:40]!r} is not hex") from None
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"block key {text[:40]!r} has {len(key)} bytes; keys have {KEY_SIZE} "
            f"({2 * KEY_SIZE} hex digits)"
        )
    return key


def pack_tokens(tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """Tokens as a little-endian uint32 array, or ``ValueError`` for ids out of range."""
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a flat list of ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > _MAX_TOKEN):
        raise ValueError(f"token ids must lie in [0, {_MAX_TOKEN}]")
    return arr.astype("<u4", copy=False)


class BlockHasher:
    """Computes the chained keys of token blocks in one namespace.

    Immutable after construction and safe to share between threads.
    """

    def __init__(
        self,
        namespace: Namespace,
        block_size: int = 16,
        algorithm: str = "xxh3_128",
        secret: bytes | None = None,
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        if algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"hash algorithm {algorithm!r} is unknown; use one of {HASH_ALGORITHMS}")
        self.namespace = namespace
        self.block_size = block_size
        self.algorithm = algorithm
        self._secret = secret or b""
        # xxh3 takes a 64-bit seed; a secret also goes into the root for both algorithms.
        self._seed = int.from_bytes(hashlib.sha256(self._secret).digest()[:8], "little") if secret else 0
        self.root = self._digest(self._secret + namespace.to_bytes(block_size))

    def _digest(self, data: bytes | memoryview) -> bytes:
        if self.algorithm == "xxh3_128":
            return xxhash.xxh3_128_digest(data, seed=self._seed)
        if self._secret:
            return hmac.digest(self._secret, data, "sha256")[:KEY_SIZE]
        return hashlib.sha256(data).digest()[:KEY_SIZE]

    def keys(
        self,
        tokens: Sequence[int] | np.ndarray,
        parent: bytes | None = None,
        start_block: int = 0,
    ) -> list[bytes]:
        """Keys of every full block of ``tokens``; a trailing partial block gets none.

        To extend a known chain, pass the key of the block before ``tokens`` as ``parent``
        and its position plus one as ``start_block``.
        """
        packed = pack_tokens(tokens)
        n = packed.size // self.block_size
        if n == 0:
            return []
        # One row per block: [index u64 | tokens u32 × block_size], built in one shot, so the
        # per-block loop (which the chain makes sequential) only hashes.
        rows = np.empty((n, 2 + self.block_size), dtype="<u4")
        rows[:, 0:2] = (
            np.arange(start_block, start_block + n, dtype="<u8").view("<u4").reshape(n, 2)
        )
        rows[:, 2:] = packed[: n * self.block_size].reshape(n, self.block_size)
        raw = rows.tobytes()
        width = rows.shape[1] * 4
        key = parent if parent is not None else self.root
        out = []
        digest = self._digest
        for i in range(n):
            key = digest(key + raw[i * width : (i + 1) * width])
            out.append(key)
        return out


def block_keys(
    tokens: Sequence[int] | np.ndarray,
    block_size: int = 16,
    namespace: Namespace | None = None,
    algorithm: str = "xxh3_128",
) -> list[bytes]:
    """The chained keys of ``tokens`` in ``namespace`` (a convenience for one-off use)."""
    return BlockHasher(namespace or Namespace(), block_size, algorithm).keys(tokens)
