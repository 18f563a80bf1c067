"""Free pages of a slab as extents (maximal runs of consecutive free pages).

A block gets one contiguous run whenever any free extent is long enough: the smallest
such extent, at its lowest start (best fit, so long extents stay whole for big blocks).
Only when every extent is too short is the block spread over several, longest first.
Freed runs merge with their free neighbours at once, so churn with blocks of mixed sizes
(several models in one service) does not crumble the slab into single pages. Contiguity
is what lets a block be read with one copy, sent from the slab as it is, and copied out
of shared memory by a client; a block spread over several runs is sent and copied as
several segments.

Every operation is O(distinct free-extent lengths) at most, a small number in practice.
"""

from __future__ import annotations


class ExtentAllocator:
    def __init__(self, num_pages: int):
        self.free_pages = 0
        self._by_start: dict[int, int] = {}  # start -> length
        self._by_end: dict[int, int] = {}  # end (exclusive) -> start
        self._by_length: dict[int, set[int]] = {}  # length -> starts
        self._add(0, num_pages)

    def allocate(self, pages: int) -> list[tuple[int, int]]:
        """``(first page, count)`` runs that together hold ``pages`` pages, one run when
        any extent is long enough. The caller has checked ``pages <= free_pages``."""
        if pages > self.free_pages:
            raise ValueError(f"asked for {pages} pages with {self.free_pages} free")
        fits = [n for n in self._by_length if n >= pages]
        if fits:
            n = min(fits)
            start = min(self._by_length[n])
            self._take(start, pages)
            return [(start, pages)]
        runs = []
        while pages:  # no extent is long enough: the longest ones, in page order
            n = max(self._by_length)
            start = min(self._by_length[n])
            runs.append((start, min(n, pages)))
            self._take(start, min(n, pages))
            pages -= min(n, pages)
        return sorted(runs)

    def free(self, runs: list[tuple[int, int]]) -> None:
        for first, count in runs:
            start, end = first, first + count
            before = self._by_end.get(start)
            if before is not None:  # merge with the free extent just before
                self._remove(before)
                start = before
            after = self._by_start.get(end)
            if after is not None:  # and the one just after
                self._remove(end)
                end += after
            self._add(start, end - start)

    def _take(self, start: int, pages: int) -> None:
        """Allocate the first ``pages`` pages of the extent at ``start``."""
        length = self._remove(start)
        if length > pages:
            self._add(start + pages, length - pages)

    def _add(self, start: int, length: int) -> None:
        self._by_start[start] = length
        self._by_end[start + length] = start
        self._by_length.setdefault(length, set()).add(start)
        self.free_pages += length

    def _remove(self, start: int) -> int:
        length = self._by_start.pop(start)
        del self._by_end[start + length]
        starts = self._by_length[length]
        starts.discard(start)
        if not starts:
            del self._by_length[length]
        self.free_pages -= length
        return length

    def extents(self) -> list[tuple[int, int]]:
        """The free extents, in page order (for tests and ``describe``)."""
        return sorted(self._by_start.items())
