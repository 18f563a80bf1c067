"""Memory-bound work over a batch of blocks, spread over a few threads.

A large hit is one pass over its bytes per tier it crosses: a flash record is hashed and
copied into its DRAM pages, a DRAM block is copied into the reply arena. One core does
that pass at a fraction of what the memory can carry; xxhash and numpy copies release the
GIL, so a few threads carry a batch's blocks at once. Each thread takes a share of at
least ``MIN_SHARE_BYTES``: waking a thread costs about what copying a megabyte does, so a
smaller share gains less than it costs, and a small batch stays on the caller's thread.

The threads are shared by the whole process and started on first use. Their number is a
fixed rule, not a measurement: a few threads saturate one socket's memory for copies, and
more would take cores from the engine beside the service.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

# The CPUs this process may run on (a container's or taskset's), not the host's.
THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
MIN_SHARE_BYTES = 4 << 20


def each(work: Callable[[T], R], items: Sequence[T], nbytes: int) -> list[R]:
    """``[work(item) for item in items]``, over as many of the shared threads as the batch
    (of ``nbytes`` in all) has shares of ``MIN_SHARE_BYTES``: one contiguous share of the
    items per thread, the first on the caller's (a hand-off per item would cost as much as
    a block's copy). ``work`` must be thread-safe and must not call ``each`` (the shared
    threads would wait on themselves); an exception it raises comes out here."""
    n = min(THREADS, len(items), nbytes // MIN_SHARE_BYTES)
    if n < 2:
        return [work(item) for item in items]
    cuts = [len(items) * k // n for k in range(n + 1)]
    shares = [items[a:b] for a, b in itertools.pairwise(cuts)]
    others = [_threads().submit(_each, work, share) for share in shares[1:]]
    try:
        out = _each(work, shares[0])
    finally:
        wait(others)  # none still writes into the caller's buffers once this returns or raises
    for f in others:
        out += f.result()
    return out


def _each(work: Callable[[T], R], share: Sequence[T]) -> list[R]:
    return [work(item) for item in share]


def copy_all(pairs: Sequence[tuple]) -> None:
    """Each ``(dest, src)`` pair copied, as ``copy`` does, a large batch over the shared threads."""
    each(_copy_pair, pairs, sum(memoryview(src).nbytes for _, src in pairs))


def _copy_pair(pair: tuple) -> None:
    copy(*pair)


def copy(dest, src) -> None:
    """Copy the bytes of ``src`` to the start of ``dest`` without holding the GIL (a
    memoryview slice assignment holds it)."""
    s = np.frombuffer(src, dtype=np.uint8)
    np.copyto(np.frombuffer(dest, dtype=np.uint8, count=s.size), s)


@functools.cache
def _threads() -> ThreadPoolExecutor:
    # Two first callers racing here may each make one; the spare keeps its few threads
    # idle, which is cheaper than a lock on every call.
    return ThreadPoolExecutor(THREADS, thread_name_prefix="kvtier-copy")


# A forked child has none of its parent's threads: it makes its own when it needs them.
os.register_at_fork(after_in_child=_threads.cache_clear)
