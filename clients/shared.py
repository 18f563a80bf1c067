"""The same-host fast path: a read-only mapping of the service's DRAM slab.

A client on the service's Unix socket asks for the slab once per connection (``MAP``; the
reply carries two read-only descriptors: the slab and its page generations) and then GETs
with ``GET_MAPPED``: the service answers where each block lies and the client copies it
out of the mapping itself, one memcpy per block and no socket transfer. Blocks outside the
slab (flash, HBM) still arrive inline in the reply.

Every copy is checked afterwards (``tiers.sharedmem`` explains the seqlock): a block the
service evicted while it was being copied comes back as ``STALE``, never as mixed bytes,
and the client asks for it again over the socket (it may have moved to flash).

A caller that copies blocks itself (an engine, straight into its KV pages, on a GPU by DMA)
gets them as ``Mapped`` (``CacheClient.get_mapped``), copies, and only then asks ``check``
which copies are whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clients.counters import ClientCounters
from tiers.base import Location
from tiers.sharedmem import fence, map_read_only, unchanged

STALE = "stale"  # copy_out's answer for a block the service moved while it was copied


def identity(fds: list[int]) -> tuple[int, int]:
    """What tells one service's slab from another's (a restarted service has a new one)."""
    st = os.fstat(fds[0])
    return st.st_dev, st.st_ino


@dataclass(frozen=True, slots=True)
class Mapped:
    """A block that lies in a service's shared slab, not yet copied: ``slab.data`` at
    ``location.segments``. Whole only if ``slab.check`` says so after the copy."""

    slab: SharedSlab
    location: Location

    @property
    def nbytes(self) -> int:
        return self.location.size


class SharedSlab:
    def __init__(self, fds: list[int], layout: tuple[int, int, int], counters: ClientCounters):
        if len(fds) != 2:
            raise ValueError(f"a shared slab comes as 2 descriptors, got {len(fds)}")
        slab_bytes, page_size, num_pages = layout
        self.identity = identity(fds)
        self.slab_bytes = slab_bytes
        self.page_size = page_size
        self.data = map_read_only(fds[0], slab_bytes)
        self.generations = map_read_only(fds[1], 8 * num_pages).view(np.uint64)
        self.counters = counters

    def copy_out(self, results: Sequence[Location | memoryview | None],
                 dests: Sequence[memoryview] | None = None) -> list[memoryview | str | None]:
        """Each block's bytes: located ones copied out of the slab, inline ones as they are
        (both into ``dests[i]`` when given, else located ones into one new buffer); ``None``
        for misses, ``STALE`` for copies the service overwrote meanwhile."""
        if dests is None:
            total = sum(r.size for r in results if isinstance(r, Location))
            arena = memoryview(np.empty(total, dtype=np.uint8)).cast("B")
        out: list[memoryview | str | None] = []
        located: list[int] = []
        filled = 0
        for i, r in enumerate(results):
            if r is None:
                out.append(None)
                continue
            if dests is not None:
                dest = memoryview(dests[i]).cast("B")
            elif isinstance(r, Location):
                dest = arena[filled : filled + r.size]
                filled += r.size
            else:
                out.append(r)  # inline, already in the reply's buffer
                continue
            size = len(r) if not isinstance(r, Location) else r.size
            if size > dest.nbytes:
                raise ValueError(f"a {size} B block does not fit its {dest.nbytes} B buffer")
            if isinstance(r, Location):
                done = 0
                for start, n in r.segments:
                    dest[done : done + n] = self.data[start : start + n]
                    done += n
                located.append(i)
            else:
                dest[:size] = r
            out.append(dest[:size])
        if located:
            whole = self.check([results[i] for i in located])
            for i in np.flatnonzero(~whole).tolist():
                out[located[i]] = STALE
        return out

    def check(self, located: Sequence[Location]) -> np.ndarray:
        """Whether each copy of these blocks, made before this call and complete, is whole
        (its block did not move meanwhile); counts the bytes and the stale ones."""
        fence()  # the copies complete before the generations are read
        whole = unchanged(self.generations, self.page_size, list(located))
        self.counters.stale_blocks += int((~whole).sum())
        self.counters.mapped_bytes += sum(w.size for w in located)
        return whole
