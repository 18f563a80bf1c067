"""The same-host fast path: a read-only mapping of the service's DRAM slab, and for an
engine on the service's GPU, its HBM slab opened by CUDA IPC.

A client on the service's Unix socket asks for the slab once per connection (``MAP``; the
reply carries two read-only descriptors: the slab and its page generations) and then GETs
with ``GET_MAPPED``: the service answers where each block lies and the client copies it
out of the mapping itself, one memcpy per block and no socket transfer. Blocks outside the
slabs the client mapped (flash; HBM for a client elsewhere) still arrive inline.

An engine on a GPU also asks for the HBM slab (``MAP_DEVICE``: the slab's CUDA IPC handle,
its GPU's UUID and a descriptor of its generations) and, when that GPU is its own, opens
it (``tiers.cuda_ipc``): an HBM hit is then a copy from GPU memory to GPU memory.

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
from typing import TYPE_CHECKING

import numpy as np

from clients.counters import ClientCounters
from tiers import cuda_ipc, parallel
from tiers.base import Location
from tiers.sharedmem import fence, map_read_only, unchanged

if TYPE_CHECKING:
    import torch

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
    """A service's shared slab as this process sees it: ``data`` (a read-only host mapping,
    or a GPU tensor opened by CUDA IPC when ``handle`` is given) and its page generations.
    ``name`` is the slab's name in the protocol (``dram``, ``hbm``)."""

    def __init__(self, fds: list[int], layout: tuple[int, int, int], counters: ClientCounters, *,
                 name: str = "dram", handle: bytes = b"", device: torch.device | None = None):
        want = 1 if handle else 2
        if len(fds) != want:
            raise ValueError(f"a shared {name} slab comes as {want} descriptors, got {len(fds)}")
        slab_bytes, page_size, num_pages = layout
        self.name = name
        self.on_gpu = bool(handle)
        self.identity = identity(fds)
        self.slab_bytes = slab_bytes
        self.page_size = page_size
        self.generations = map_read_only(fds[-1], 8 * num_pages).view(np.uint64)
        if handle:
            self.data = cuda_ipc.open_handle(handle, slab_bytes, device)
        else:
            self.data = map_read_only(fds[0], slab_bytes)
        self.counters = counters

    def copy_out(self, results: Sequence[Location | memoryview | None],
                 dests: Sequence[memoryview] | None = None) -> list[memoryview | str | None]:
        """Each block's bytes: located ones copied out of this host slab, inline ones as they are
        (both into ``dests[i]`` when given, else located ones into one new buffer); ``None``
        for misses, ``STALE`` for copies the service overwrote meanwhile."""
        if dests is None:
            total = sum(r.size for r in results if isinstance(r, Location))
            arena = memoryview(np.empty(total, dtype=np.uint8)).cast("B")
        out: list[memoryview | str | None] = []
        located: list[int] = []
        copies: list[tuple[memoryview, Location | memoryview]] = []
        filled = nbytes = 0
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
                located.append(i)
            copies.append((dest, r))
            nbytes += size
            out.append(dest[:size])
        parallel.each(self._copy, copies, nbytes)
        if located:
            whole = self.check([results[i] for i in located])
            for i in np.flatnonzero(~whole).tolist():
                out[located[i]] = STALE
        return out

    def _copy(self, job: tuple[memoryview, Location | memoryview]) -> None:
        dest, r = job
        if not isinstance(r, Location):
            parallel.copy(dest, r)
            return
        done = 0
        for start, n in r.segments:
            parallel.copy(dest[done:], self.data[start : start + n])
            done += n

    def check(self, located: Sequence[Location]) -> np.ndarray:
        """Whether each copy of these blocks, made before this call and complete, is whole
        (its block did not move meanwhile); counts the bytes and the stale ones."""
        fence()  # the copies complete before the generations are read
        whole = unchanged(self.generations, self.page_size, list(located))
        self.counters.stale_blocks += int((~whole).sum())
        self.counters.mapped_bytes += sum(w.size for w in located)
        return whole
