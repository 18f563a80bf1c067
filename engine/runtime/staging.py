"""The staging ring: host copies of KV pages waiting to be saved, so a save never holds up a step.

::

    engine thread                      ring: host [slots, nbytes] uint8     saver thread
    stage(pages) ── take free slots ──► copy page → slot ─────────────────► wait(slot), put(view(slot))
                   (none free: the caller drops the block and counts it)     release(slot) ──► free again

One copy per page into a free slot. On a GPU the copies run on a side stream that first
waits for the current stream (the step that wrote the pages); the current stream then waits
for the side stream (no later kernel overwrites a page before its copy is done); the host
never waits: the saver waits for the slot's event before it reads the slot. On the CPU a
copy is done when ``stage`` returns.

Ownership: a slot is the engine thread's from ``stage`` until it hands the ``Staged`` over,
then the saver's, which ``release``s it after the put whatever the outcome. The free list
is the only state both threads touch; a lock guards it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Staged:
    """A staged page: its bytes (a view of the slot, no copy) once ``wait`` returns."""

    ring: StagingRing
    slot: int

    @property
    def view(self) -> memoryview:
        return self.ring.views[self.slot]

    def wait(self) -> None:
        self.ring.wait(self.slot)

    def release(self) -> None:
        self.ring.release(self.slot)


class StagingRing:
    def __init__(self, slots: int, nbytes: int, device: str | torch.device):
        device = torch.device(device)
        cuda = device.type == "cuda"
        # host: [slots, nbytes] uint8, pinned on a GPU so the copies are DMAs off the step's stream
        self.host = torch.empty(slots, nbytes, dtype=torch.uint8, pin_memory=cuda)
        self.views = [memoryview(row) for row in self.host.numpy()]
        self._stream = torch.cuda.Stream(device) if cuda else None
        self._events: list[torch.cuda.Event | None] = [None] * slots  # a slot's copy is done when set
        self._free = list(range(slots))
        self._lock = threading.Lock()

    def take(self, n: int) -> list[Staged]:
        """Up to ``n`` free slots for the caller to fill on the host itself (``host[slot]``)
        before it hands them over; fewer when fewer are free (the rest: dropped)."""
        with self._lock:
            return [Staged(self, self._free.pop()) for _ in range(min(n, len(self._free)))]

    def stage(self, pages: list[torch.Tensor]) -> list[Staged]:
        """Copy the leading ``pages`` (each contiguous, on the ring's device) into free slots,
        as many as there are free slots; the rest are the caller's to drop."""
        staged = self.take(len(pages))
        slots = [s.slot for s in staged]
        if self._stream is None:
            for slot, page in zip(slots, pages, strict=False):
                self.host[slot].copy_(page.view(-1).view(torch.uint8))
        elif slots:
            self._stage_cuda(slots, pages)
        return staged

    def _stage_cuda(self, slots: list[int], pages: list[torch.Tensor]) -> None:
        """The only CUDA code of the save path: copies on the side stream, ordered both ways."""
        current = torch.cuda.current_stream(pages[0].device)
        self._stream.wait_stream(current)  # the step that wrote the pages comes first
        with torch.cuda.stream(self._stream):
            for slot, page in zip(slots, pages, strict=False):
                self.host[slot].copy_(page.view(-1).view(torch.uint8), non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        current.wait_stream(self._stream)  # later kernels may overwrite the pages only after this
        for slot in slots:
            self._events[slot] = done

    def wait(self, slot: int) -> None:
        """Block (the saver thread) until the slot's copy is done; at once on the CPU."""
        event = self._events[slot]
        if event is not None:
            event.synchronize()

    def release(self, slot: int) -> None:
        self._events[slot] = None
        with self._lock:
            self._free.append(slot)
