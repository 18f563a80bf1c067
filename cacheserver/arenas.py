"""Reusable buffers for GET replies, shared by every connection.

A GET copies its payloads once, into an arena, and the reply is sent from there. Arenas
are taken for one request and given back once its reply is sent, so a warm service hands
a new connection memory that is already mapped (the page faults of a fresh buffer cost
more than the copy itself). The pool keeps at most
``max_arenas``. A new arena is fresh anonymous memory (no zeroing pass of ours), in huge
pages where the kernel allows them (``MADV_HUGEPAGE``): its first touch, as in the first
large GET after a start, then faults once per 2 MiB instead of once per 4 KiB.
"""

from __future__ import annotations

import contextlib
import mmap
import threading

import numpy as np


class ArenaPool:
    def __init__(self, max_arenas: int = 8):
        self.max_arenas = max_arenas
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A free arena of at least ``nbytes`` (the smallest that fits), or a new one."""
        with self._lock:
            # By position: list.remove would compare arrays with ==, element by element.
            fits = [i for i, a in enumerate(self._free) if a.nbytes >= nbytes]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].nbytes))
        return _fresh(max(nbytes, 1))

    def give(self, arena: np.ndarray) -> None:
        """Return an arena whose reply was sent; the smallest goes when the pool is full."""
        with self._lock:
            self._free.append(arena)
            if len(self._free) > self.max_arenas:
                self._free.pop(min(range(len(self._free)), key=lambda i: self._free[i].nbytes))


def _fresh(nbytes: int) -> np.ndarray:
    memory = mmap.mmap(-1, nbytes)
    with contextlib.suppress(AttributeError, OSError):  # no madvise, or THP off: 4 KiB pages
        memory.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(memory, dtype=np.uint8)
