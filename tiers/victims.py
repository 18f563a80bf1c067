"""The store's victim order: a policy's candidates with chain tails first.

A block is useless without its ancestors, so the store evicts leaves before the blocks
they hang from. ``leaves_first`` is that order, shared by ``TieredStore`` and the shadow
caches that simulate it (``tiers.adaptive``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

# How many blocks with children the victim search skips before it gives up looking for a
# leaf; bounds the search so eviction stays O(1) in the common case.
LEAF_SCAN_LIMIT = 64


def leaves_first(candidates: Iterable[bytes], held_children: Callable[[bytes], int],
                 parent_of: Callable[[bytes], bytes | None], scan_limit: int) -> Iterator[bytes]:
    """``candidates`` (a policy's order) with leaves first.

    ``held_children(key)``: the children that evicting ``key`` would strand (0 for a
    leaf). A key whose children have all been yielded is a leaf from then on, and comes
    right after the last of them: a batch takes the tail of the chain the policy ranks
    first, deepest first, rather than the last block of many chains. At most
    ``scan_limit`` keys with children wait; after that, or when the candidates run out,
    the waiting ones follow in policy order, children or not.
    """
    waiting: dict[bytes, None] = {}  # keys with children, in policy order
    chosen: dict[bytes | None, int] = {}  # parent -> its children yielded so far
    for key in candidates:
        if held_children(key) > chosen.get(key, 0):
            waiting[key] = None
            if len(waiting) >= scan_limit:
                break
            continue
        victim = key
        while True:  # the victim, then each waiting ancestor it frees
            yield victim
            parent = parent_of(victim)
            chosen[parent] = chosen.get(parent, 0) + 1
            if parent not in waiting or held_children(parent) > chosen[parent]:
                break
            del waiting[parent]
            victim = parent
    yield from waiting
