"""Keeping freed block-sized buffers in the heap for reuse.

Every block read allocates a payload of about a block's size. glibc serves such sizes with
a fresh ``mmap`` and returns them with ``munmap`` on free, so every read would pay page
faults and the zeroing of fresh pages; the thresholds below keep freed buffers in the heap
for the next read instead. The cost is that freed memory is returned to the OS later (up
to ``trim`` bytes stay mapped).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_buffers(mmap_threshold: int = 64 << 20, trim: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds; False (and a log line) where that is not
    possible (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("memory: no glibc mallopt here; block reads will map fresh pages")
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
