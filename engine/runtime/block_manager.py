"""Pages of the KV pool: who holds them, and the local prefix cache over them.

The block manager owns every page's reference count, the prefix-cache index
(block key -> page) and the free list. A page whose count drops to zero goes on the free
list but keeps its content and its key, so a later request with the same prefix can take
it back (a *hit*); new pages are taken from the free list's oldest end, and only then
does a page lose its old key (an *eviction*). Keys are the chained block keys of
``hashing/keys.py``, the same the cache service uses, so a connector can ask the service
for the blocks after the local hit (``find_cached`` gives the local part) and load them
into pages it ``reserve``s and then ``commit``s.

Free list order (an ``OrderedDict``: O(1) take-oldest, and O(1) removal when a free page
is hit again)::

    oldest ... newest      pages without a key go to the oldest end (nothing to keep);
                           a finished sequence's pages go to the newest end, last block
                           first, so its deepest blocks are evicted before its prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from engine.runtime.sequence import Sequence


@dataclass
class BlockStats:
    """Counters of the local prefix cache, for tests, benchmarks and metrics."""

    lookups: int = 0
    hit_blocks: int = 0
    evictions: int = 0
    allocation_failures: int = 0


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: bytes | None = None


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = True
    stats: BlockStats = field(default_factory=BlockStats)

    def __post_init__(self) -> None:
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self._index: dict[bytes, int] = {}
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(self.num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def cached_block_id(self, key: bytes) -> int | None:
        return self._index.get(key)

    def find_cached(self, keys: list[bytes]) -> list[int]:
        """Pages holding the longest prefix of ``keys`` (stops at the first miss)."""
        found = []
        if self.enable_prefix_caching:
            for key in keys:
                block_id = self._index.get(key)
                if block_id is None:
                    break
                found.append(block_id)
        self.stats.lookups += 1
        return found

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int, cached: list[int]) -> int:
        """Free pages an ``allocate_slots`` call with these arguments would take."""
        have = len(seq.block_table) + len(cached)
        covered = seq.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        new = max(0, -(-covered // self.block_size) - have)
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)
        return new + revived

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, cached: list[int] = ()) -> bool:
        """Give ``seq`` pages for ``cached`` (a ``find_cached`` hit) and ``num_new_tokens`` more.

        All or nothing: returns False, changing nothing, if the free pages do not suffice.
        """
        cached = list(cached)
        if self.num_blocks_needed(seq, num_new_tokens, cached) > self.num_free_blocks:
            self.stats.allocation_failures += 1
            return False
        for block_id in cached:
            self._take(block_id)
        self.stats.hit_blocks += len(cached)
        covered = seq.num_computed_tokens + len(cached) * self.block_size + num_new_tokens
        new = -(-covered // self.block_size) - len(seq.block_table) - len(cached)
        seq.append_blocks(cached + [self._take_oldest_free() for _ in range(new)])
        return True

    def free(self, seq: Sequence) -> None:
        """Release ``seq``'s pages; unshared ones go on the free list, last block first."""
        for block_id in reversed(seq.release_blocks()):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count < 0:
                raise AssertionError(f"bug: block {block_id} freed more often than taken")
            if block.ref_count == 0:
                self._free[block_id] = None
                if block.key is None:
                    self._free.move_to_end(block_id, last=False)

    def cache_full_blocks(self, seq: Sequence, start: int, end: int) -> list[int]:
        """Index the pages that became full of computed tokens as tokens [start, end) were
        computed; returns the block positions newly indexed (what a connector may save)."""
        if not self.enable_prefix_caching:
            return []
        first, last = start // self.block_size, end // self.block_size
        if last <= first:
            return []
        keys = seq.block_keys(last)
        indexed = []
        for i in range(first, last):
            block = self.blocks[seq.block_table[i]]
            if block.key is None and keys[i] not in self._index:
                block.key = keys[i]
                self._index[keys[i]] = block.block_id
                indexed.append(i)
        return indexed

    def num_cached(self, keys: list[bytes]) -> int:
        """Length of the longest prefix of ``keys`` the pool holds (a peek: counts nothing)."""
        n = 0
        while n < len(keys) and keys[n] in self._index:
            n += 1
        return n

    def reserve(self, n: int) -> list[int]:
        """Up to ``n`` free pages (fewer when fewer are free) for blocks on their way in from
        the cache service: taken off the free list and out of the index (what they held is
        evicted), so nothing hits them while they are written. ``commit`` or ``release``
        each of them afterwards."""
        return [self._take_oldest_free() for _ in range(min(n, self.num_free_blocks))]

    def commit(self, block_ids: list[int], keys: list[bytes]) -> None:
        """Reserved pages now hold ``keys``' blocks: index them, free (reference count 0),
        like the pages of a finished request, so admission finds them as hits. Deepest
        first onto the newest end, so the prefix goes last. A key indexed meanwhile (the
        block was computed here) keeps its page; this one is released."""
        for block_id, key in reversed(list(zip(block_ids, keys, strict=True))):
            if key in self._index:
                self.release([block_id])
                continue
            block = self.blocks[block_id]
            block.ref_count, block.key = 0, key
            self._index[key] = block_id
            self._free[block_id] = None

    def release(self, block_ids: list[int]) -> None:
        """Give reserved pages back unused: free, at the oldest end (they hold nothing)."""
        for block_id in block_ids:
            self.blocks[block_id].ref_count = 0
            self._free[block_id] = None
            self._free.move_to_end(block_id, last=False)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _take_oldest_free(self) -> int:
        block_id, _ = self._free.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:  # evict: the page is reused for other tokens
            del self._index[block.key]
            block.key = None
            self.stats.evictions += 1
        block.ref_count = 1
        return block_id
