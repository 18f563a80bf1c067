"""Which blocks an admin request means: keys from hex or from tokens, and the blocks of a
namespace (for a flush).

A namespace is known by its root key (``BlockHasher(...).root``): its depth-0 blocks have
the root as parent, deeper blocks reach it through their parents. A block whose parent was
already dropped is unreachable and so not found here (it is useless anyway, and the
store's eviction will take it).
"""

from __future__ import annotations

from cacheserver.schemas import BlockSelection, NamespaceSpec
from hashing.keys import BlockHasher, Namespace, parse_key
from tiers.store import TieredStore


def hasher_for(spec: NamespaceSpec) -> BlockHasher:
    return BlockHasher(Namespace(spec.model_id, spec.kv_layout, spec.adapter_id, spec.salt), spec.block_size)


def selected_keys(sel: BlockSelection) -> list[bytes]:
    """The keys a request names; ``ValueError`` for a malformed key or token id."""
    if sel.keys is not None:
        return [parse_key(k) for k in sel.keys]
    return hasher_for(sel).keys(sel.tokens)


def namespace_blocks(store: TieredStore, root: bytes, include_pinned: bool) -> list[bytes]:
    """Keys of every block reachable from ``root`` through parent links."""
    rows = store.list_blocks(limit=len(store) + 1)
    rows.sort(key=lambda r: r["depth"])  # parents before children
    inside = {root}
    found = []
    for r in rows:
        if bytes.fromhex(r["parent"]) in inside:
            key = bytes.fromhex(r["key"])
            inside.add(key)
            if include_pinned or r["pinned"] is None:
                found.append(key)
    return found
