"""Chains of test blocks whose payloads are derived from their keys, so any mix-up shows."""

from __future__ import annotations

from hashing.keys import BlockHasher, Namespace


def payload_for(key: bytes, size: int) -> bytes:
    return (key * (size // len(key) + 1))[:size]


def chain(name: str, n: int, size: int = 4096, block_size: int = 4) -> list[tuple[bytes, bytes, int, bytes]]:
    """``n`` chained ``(key, parent, depth, payload)`` entries of a prompt named ``name``."""
    hasher = BlockHasher(Namespace(salt=name), block_size)
    keys = hasher.keys(list(range(n * block_size)))
    parents = [hasher.root, *keys[:-1]]
    return [(k, p, i, payload_for(k, size)) for i, (k, p) in enumerate(zip(keys, parents, strict=True))]


def keys_of(blocks) -> list[bytes]:
    """The keys of ``chain`` entries."""
    return [b[0] for b in blocks]
