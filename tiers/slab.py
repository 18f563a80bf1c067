"""A tier of fixed-size pages in one preallocated buffer: host DRAM or GPU HBM.

::

    slab (flat): | page 0 | page 1 | page 2 | page 3 | page 4 | ... |   page_size bytes each
    block A  ──► runs [(0, 2)]             (pages 0-1, one contiguous run)
    block B  ──► runs [(2, 1), (4, 1)]     (a block may span several runs after churn)

The buffer is allocated once at start, so a running service never fragments the heap or
grows. A block takes ``ceil(size / page_size)`` pages; free pages are handed out lowest
first and a freed block's pages go back so the next block of the same size gets the same
contiguous run, so nearly every copy is a single memcpy. Pages rather than one slot per
block let one service hold blocks of several models (360 KiB for SmolLM2, 2 MiB for
Llama-3-8B) without a slot size to tune. Host slabs are page-locked (pinned) when CUDA
exists, so copies to and from a GPU run at full DMA speed.
"""

from __future__ import annotations

import numpy as np
import torch

from tiers.base import Block, PayloadSizeError, Tier

DEFAULT_PAGE_SIZE = 64 << 10
DEFAULT_MAX_BLOCK = 64 << 20


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Pages as (first page, count) runs of consecutive indices."""
    runs: list[tuple[int, int]] = []
    for p in pages:
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs


class SlabTier(Tier):
    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        device: str = "cpu",
        max_block_bytes: int = DEFAULT_MAX_BLOCK,
    ):
        if page_size < 1:
            raise ValueError(f"{name}: page size must be positive, got {page_size}")
        num_pages = capacity_bytes // page_size
        if num_pages == 0:
            raise ValueError(
                f"{name}: capacity {capacity_bytes} B holds no page of {page_size} B; "
                "raise the capacity or lower the page size"
            )
        self.name = name
        self.page_size = page_size
        self.num_pages = num_pages
        self.capacity_bytes = num_pages * page_size
        self.max_block_bytes = min(max_block_bytes, self.capacity_bytes)
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.pinned_memory = not on_gpu and torch.cuda.is_available()
        # flat: [num_pages * page_size] bytes on the tier's device. Zeroed, so every page
        # is committed at start: no page faults while serving, and no overcommit surprise.
        self._flat = torch.zeros(num_pages * page_size, dtype=torch.uint8, device=self.device,
                                 pin_memory=self.pinned_memory)
        self._host = None if on_gpu else self._flat.numpy()
        self._host_view = None if on_gpu else memoryview(self._host)
        self._free = list(range(num_pages - 1, -1, -1))  # a stack: pop gives the lowest page
        self._blocks: dict[bytes, tuple[int, list[tuple[int, int]]]] = {}  # key -> (size, runs)

    def footprint(self, size: int) -> int:
        if not 0 < size <= self.max_block_bytes:
            raise PayloadSizeError(
                f"{self.name}: a block payload of {size} B is out of range "
                f"(1 B to {self.max_block_bytes} B)"
            )
        return -(-size // self.page_size) * self.page_size

    def contains(self, key: bytes) -> bool:
        return key in self._blocks

    def get(self, key: bytes) -> bytes | None:
        entry = self._blocks.get(key)
        if entry is None:
            return None
        size, runs = entry
        if self._host is not None and len(runs) == 1:
            start = runs[0][0] * self.page_size
            return self._host[start : start + size].tobytes()
        return self._gather(size, runs, np.empty(size, dtype=np.uint8)).tobytes()

    def read_into(self, key: bytes, out: memoryview) -> int:
        entry = self._blocks.get(key)
        if entry is None:
            return -1
        size, runs = entry
        self._gather(size, runs, np.frombuffer(out, dtype=np.uint8, count=size))
        return size

    def read_many_into(self, keys: list[bytes], dests: list[memoryview]) -> list[int]:
        """The batch in one loop; a block in one run (nearly all) is one memoryview copy."""
        sizes = []
        host = self._host_view
        for key, dest in zip(keys, dests, strict=True):
            entry = self._blocks.get(key)
            if entry is None:
                sizes.append(-1)
                continue
            size, runs = entry
            if host is not None and len(runs) == 1:
                start = runs[0][0] * self.page_size
                dest[:size] = host[start : start + size]
            else:
                self._gather(size, runs, np.frombuffer(dest, dtype=np.uint8, count=size))
            sizes.append(size)
        return sizes

    def _gather(self, size: int, runs: list[tuple[int, int]], out: np.ndarray) -> np.ndarray:
        """Copy a block's runs, in order, into ``out`` (host memory)."""
        done = 0
        for first, count in runs:
            start = first * self.page_size
            n = min(count * self.page_size, size - done)
            if self._host is not None:
                np.copyto(out[done : done + n], self._host[start : start + n])
            else:
                out[done : done + n] = self._flat[start : start + n].cpu().numpy()
            done += n
        return out

    def put_many(self, blocks: list[Block]) -> None:
        need = sum(self.footprint(b.size) // self.page_size for b in blocks if b.key not in self._blocks)
        if need > len(self._free):
            raise RuntimeError(f"bug: {self.name} asked for {need} pages with {len(self._free)} free")
        for b in blocks:
            if b.key in self._blocks:
                continue
            pages = [self._free.pop() for _ in range(-(-b.size // self.page_size))]
            runs = _runs(pages)
            self._write(runs, b.payload)
            self._blocks[b.key] = (b.size, runs)

    def _write(self, runs: list[tuple[int, int]], payload) -> None:
        src = np.frombuffer(payload, dtype=np.uint8)
        done = 0
        for first, count in runs:
            start = first * self.page_size
            n = min(count * self.page_size, src.size - done)
            if self._host is not None:
                self._host[start : start + n] = src[done : done + n]
            else:
                self._flat[start : start + n].copy_(torch.from_numpy(src[done : done + n].copy()))
            done += n

    def delete_many(self, keys: list[bytes]) -> None:
        for key in keys:
            entry = self._blocks.pop(key, None)
            if entry is None:
                continue
            # Push back highest first, so the next pops hand out this run in order again.
            for first, count in reversed(entry[1]):
                self._free.extend(range(first + count - 1, first - 1, -1))

    def describe(self) -> dict:
        return {**super().describe(), "page_size": self.page_size, "num_pages": self.num_pages,
                "free_pages": len(self._free), "device": str(self.device),
                "pinned_memory": self.pinned_memory}


def dram_tier(capacity_bytes: int, page_size: int = DEFAULT_PAGE_SIZE) -> SlabTier:
    return SlabTier("dram", capacity_bytes, page_size, "cpu")


def hbm_tier(capacity_bytes: int, page_size: int = DEFAULT_PAGE_SIZE, device: str = "cuda") -> SlabTier:
    if not torch.cuda.is_available():
        raise ValueError("the HBM tier needs a CUDA device and none is visible; set its size to 0")
    return SlabTier("hbm", capacity_bytes, page_size, device)
