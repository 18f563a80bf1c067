"""Memory a same-host client may map read-only: the DRAM slab and its page generations.

The service backs a shareable tier with a ``memfd`` (anonymous memory with a file
descriptor) and hands clients on its Unix socket a read-only descriptor of it
(``SCM_RIGHTS``), so a GET becomes: the service says where each block lies, the client
copies it out of the mapping itself. No byte crosses a socket.

A block can be evicted while a client copies it; the page generations make that safe
without locks shared across processes (a seqlock). The tier bumps the generation of a
block's pages *before* the pages can be reused; the client copies first and reads the
generation after, and keeps the copy only if it is the one it was told. A copy that raced
an overwrite therefore never passes: any byte of new data it saw was written after the
bump, and on x86-64 a later load cannot see memory older than an earlier load saw (TSO).
``fence`` makes the order explicit at both ends (a locked instruction is a full barrier
on x86-64, string copies included). Other architectures order memory more weakly, so the
service offers shared memory only on x86-64 (``supported``).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import platform
import threading

import numpy as np

_barrier = threading.Lock()


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and hasattr(os, "memfd_create")


def fence() -> None:
    """A full memory barrier: acquiring a lock is a LOCK-prefixed instruction on x86-64."""
    with _barrier:
        pass


class SharedRegion:
    """``nbytes`` of zeroed, committed memory behind a memfd, writable by this process."""

    def __init__(self, name: str, nbytes: int):
        self.nbytes = nbytes
        self._fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, nbytes)
            self._map = _populated(self._fd, nbytes)
        except OSError:
            os.close(self._fd)
            raise
        self.array = np.frombuffer(self._map, dtype=np.uint8)

    def read_only_fd(self) -> int:
        """A new descriptor of the region that can only be mapped for reading (the caller
        closes it). Reopening through /proc drops the write permission the memfd has."""
        return os.open(f"/proc/self/fd/{self._fd}", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        self.array = None
        with contextlib.suppress(BufferError):  # views still alive: the mapping goes with them
            self._map.close()
        os.close(self._fd)


def _populated(fd: int, nbytes: int) -> mmap.mmap:
    """A shared mapping with every page committed now: no page faults while serving.
    ``MADV_POPULATE_WRITE`` (Linux 5.14) maps them writable; ``MAP_POPULATE``, the
    fallback, maps a shared mapping's pages for reading only, so each page's first write
    still faults, which slows the first writes after a start."""
    mapping = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
    try:
        mapping.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))  # named from Python 3.13
        return mapping
    except OSError:  # an older kernel: EINVAL
        mapping.close()
        return mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)


def unchanged(generations: np.ndarray, page_size: int, located: list) -> np.ndarray:
    """Whether each ``Location`` still holds the block it was located for: the generation
    of its first page is the one it was told. (All of a block's pages are bumped together
    when it is freed, so the first page speaks for the block.)"""
    first_pages = np.array([w.offset // page_size for w in located], dtype=np.int64)
    told = np.array([w.generation for w in located], dtype=np.uint64)
    return generations[first_pages] == told


def map_read_only(fd: int, nbytes: int) -> np.ndarray:
    """A client's read-only view of a region whose descriptor it received."""
    if os.fstat(fd).st_size < nbytes:
        raise ValueError(f"shared region is {os.fstat(fd).st_size} B, smaller than the {nbytes} B announced")
    return np.frombuffer(mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ), dtype=np.uint8)
