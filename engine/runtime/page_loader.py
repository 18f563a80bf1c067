"""Cache hits into KV pages: one copy per block, straight from where the block lies.

::

    fetched block                          reserved page (unindexed)        then
    Mapped: a service's shared slab ─────► copy (GPU: DMA, side stream) ──► check: whole?
    memoryview: a socket reply's bytes ──► copy ─────────────────────────►  (always whole)

A block in the service's DRAM slab (``clients.shared.Mapped``, same host, ``unix://``) is
copied out of the read-only mapping into its page with no stop in between: no Python
``bytes``, no staging buffer. On a GPU the mapping is registered with the CUDA runtime
(read-only, once per slab), so the copy is a DMA from the service's memory into the page,
queued on a side stream: the engine keeps stepping other requests while it runs. A block in
the service's HBM slab on the engine's own GPU (opened by CUDA IPC, ``tiers.cuda_ipc``) is
copied GPU to GPU the same way. Blocks that came inline (flash, TCP, HBM on another GPU)
are copied from the reply's buffer.

Whether a mapped copy is whole is known only after it completed (``Load.done``): the
service may have evicted the block and reused its pages meanwhile, and ``Load.whole`` asks
the slab's page generations (the seqlock of ``tiers.sharedmem``). The caller keeps the
pages unindexed until then, so nothing reads a page whose copy is unchecked; a block that
moved is recomputed, never used.

All CUDA lines are in ``_host_cuda`` and ``_copy_cuda``.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Sequence

import torch

from clients.shared import Mapped, SharedSlab

log = logging.getLogger(__name__)

Block = Mapped | memoryview

_CUDA_HOST_REGISTER_READ_ONLY = 8  # cudaHostRegisterReadOnly: the service's mapping is PROT_READ


class Load:
    """Copies into pages, queued; ``whole`` once ``done``."""

    def __init__(self, blocks: Sequence[Block], event: torch.cuda.Event | None):
        self.blocks = list(blocks)  # held until the copies are done: they read from these
        self._event = event

    def done(self) -> bool:
        return self._event is None or self._event.query()

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()

    def whole(self) -> list[bool]:
        """Per block, whether its page holds it whole; call once ``done``."""
        if not self.done():
            raise RuntimeError("a load is checked only after its copies completed")
        out = [True] * len(self.blocks)
        by_slab: dict[int, list[int]] = {}
        for i, b in enumerate(self.blocks):
            if isinstance(b, Mapped):
                by_slab.setdefault(id(b.slab), []).append(i)
        for rows in by_slab.values():
            slab = self.blocks[rows[0]].slab
            for i, ok in zip(rows, slab.check([self.blocks[i].location for i in rows]).tolist(), strict=True):
                out[i] = ok
        return out


class PageLoader:
    def __init__(self, device: str | torch.device):
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(self.device) if cuda else None
        # Each shared slab as a host tensor (registered on a GPU), for as long as the slab lives.
        self._hosts: weakref.WeakKeyDictionary[SharedSlab, torch.Tensor] = weakref.WeakKeyDictionary()

    def load(self, pages: Sequence[torch.Tensor], blocks: Sequence[Block]) -> Load:
        """Copy each block into its page (a contiguous ``[nbytes]`` uint8 view of the pool,
        as large as the block). On the CPU the copies are done when this returns."""
        sources = [self._source(b) for b in blocks]
        if self._stream is None:
            for page, parts in zip(pages, sources, strict=True):
                _copy(page, parts, non_blocking=False)
            return Load(blocks, None)
        return Load(blocks, self._copy_cuda(pages, sources))

    def _source(self, block: Block) -> list[torch.Tensor]:
        """The block's bytes as tensors (views, no copy), in order: in host memory, or in
        the service's HBM slab on this GPU."""
        if isinstance(block, Mapped):
            data = block.slab.data if block.slab.on_gpu else self._host(block.slab)
            return [data[start : start + n] for start, n in block.location.segments]
        return [torch.frombuffer(block, dtype=torch.uint8)] if block.nbytes else []

    def _host(self, slab: SharedSlab) -> torch.Tensor:
        host = self._hosts.get(slab)
        if host is None:
            with warnings.catch_warnings():  # the mapping is read-only, and only ever read
                warnings.simplefilter("ignore", UserWarning)
                host = torch.from_numpy(slab.data)
            if self._stream is not None:
                self._host_cuda(slab, host)
            self._hosts[slab] = host
        return host

    @staticmethod
    def _host_cuda(slab: SharedSlab, host: torch.Tensor) -> None:
        """Register the mapping with the CUDA runtime, so copies out of it are DMAs; it is
        unregistered when the slab goes (a restarted service brings a new one)."""
        cudart = torch.cuda.cudart()
        err = cudart.cudaHostRegister(host.data_ptr(), host.numel(), _CUDA_HOST_REGISTER_READ_ONLY)
        if int(err) != 0:  # still correct, only slower: the driver stages pageable copies
            log.warning("cudaHostRegister of the cache service's %d B slab failed (%s); "
                        "hits are copied from pageable memory", host.numel(), err)
            return
        # ``host`` rides along, so the mapping outlives its registration.
        weakref.finalize(slab, lambda h: cudart.cudaHostUnregister(h.data_ptr()), host)

    def _copy_cuda(self, pages: Sequence[torch.Tensor], sources: list[list[torch.Tensor]]):
        """Copies on the side stream, after whatever the current stream still does with the
        reserved pages (their last owner's kernels); an event says when they are done."""
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            for page, parts in zip(pages, sources, strict=True):
                _copy(page, parts, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        return done


def _copy(page: torch.Tensor, parts: list[torch.Tensor], non_blocking: bool) -> None:
    at = 0
    for part in parts:
        page[at : at + part.numel()].copy_(part, non_blocking=non_blocking)
        at += part.numel()
