"""A tier of fixed-size pages in one preallocated buffer: host DRAM or GPU HBM.

::

    slab (flat): | page 0 | page 1 | page 2 | page 3 | page 4 | ... |   page_size bytes each
    block A  ──► runs [(0, 2)]             (pages 0-1, one contiguous run)
    block B  ──► runs [(2, 1), (4, 1)]     (a block may span several runs after churn)

The buffer is allocated once at start, so a running service never fragments the heap or
grows. A block takes ``ceil(size / page_size)`` pages, as one run of consecutive pages
whenever a free extent is long enough (``tiers.extents``: best fit, freed runs merge), so
nearly every copy is a single memcpy. Pages rather than one slot per
block let one service hold blocks of several models (360 KiB for SmolLM2, 2 MiB for
Llama-3-8B) without a slot size to tune. A host slab is page-locked (pinned) when asked
(``pinned``: the service asks when it also has an HBM tier, so copies between the two run
at full DMA speed); a host slab needs no torch otherwise, so a CPU service never loads it.

A slab can be *shared* (``shared=True``): a generation counter per page lives in
memfd-backed memory (``tiers.sharedmem``) that same-host clients map read-only, and so do
the bytes of a host slab; a GPU slab's bytes are one allocation exported by CUDA IPC
(``tiers.cuda_ipc``) to engines on the same GPU. ``locate_many`` tells where a block lies
and its generation; a page's generation is bumped before the page is freed for reuse, so a
reader that copies a block and then finds the same generation knows its copy is whole.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

from tiers import cuda_ipc, parallel, sharedmem
from tiers.base import Block, Location, Payload, PayloadSizeError, Tier, payload_parts
from tiers.extents import ExtentAllocator

DEFAULT_PAGE_SIZE = 64 << 10
DEFAULT_MAX_BLOCK = 64 << 20


class SlabTier(Tier):
    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        page_size: int = DEFAULT_PAGE_SIZE,
        device: str = "cpu",
        max_block_bytes: int = DEFAULT_MAX_BLOCK,
        *,
        shared: bool = False,
        pinned: bool = False,
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
        self.on_gpu = on_gpu = device.startswith("cuda")
        self.pinned_memory = False
        self.shared = shared
        self._regions: list[sharedmem.SharedRegion] = []
        self._ipc_handle = b""
        nbytes = num_pages * page_size
        if on_gpu:  # a shared GPU slab is one allocation exported by CUDA IPC
            import torch

            self.device = torch.device(device)
            if shared:
                self._flat, self._ipc_handle = cuda_ipc.allocate(nbytes, self.device)
            else:
                self._flat = torch.zeros(nbytes, dtype=torch.uint8, device=self.device)
            self._host = None
        else:
            # A shared host slab lives in memory clients map; either way every page is
            # committed at start: no page faults while serving, and no overcommit surprise.
            self.device = device
            self._host = self._region(f"kvtier-{name}", nbytes) if shared else _committed(nbytes)
            cudart = _cudart() if pinned else None  # None without CUDA: the slab stays pageable
            if cudart is not None:
                cudart.cudaHostRegister(self._host.ctypes.data, nbytes, 0)
                self.pinned_memory = True
        # Generations in shared host memory when clients map the slab.
        self._gens = (self._region(f"kvtier-{name}-gens", 8 * num_pages).view(np.uint64) if shared
                      else np.zeros(num_pages, dtype=np.uint64))
        self.locates = not on_gpu or shared
        self.reserves = not on_gpu
        self._host_view = None if on_gpu else memoryview(self._host)
        self._free = ExtentAllocator(num_pages)
        self._blocks: dict[bytes, tuple[int, list[tuple[int, int]]]] = {}  # key -> (size, runs)

    def _region(self, name: str, nbytes: int) -> np.ndarray:
        region = sharedmem.SharedRegion(name, nbytes)
        self._regions.append(region)
        return region.array

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
        """The batch in one pass, a large one over several threads (``tiers.parallel``); a
        block in one run (nearly all) is one copy."""
        found = [(i, entry) for i, key in enumerate(keys) if (entry := self._blocks.get(key)) is not None]

        def copy(item: tuple[int, tuple[int, list[tuple[int, int]]]]) -> None:
            i, (size, runs) = item
            self._gather(size, runs, np.frombuffer(dests[i], dtype=np.uint8, count=size))

        # A GPU slab's copies queue on one stream anyway: those stay on this thread.
        parallel.each(copy, found, sum(size for _, (size, _) in found) if self._host is not None else 0)
        sizes = [-1] * len(keys)
        for i, (size, _) in found:
            sizes[i] = size
        return sizes

    def _segments(self, size: int, runs: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        """A block's bytes in the slab, in order: (byte offset, length) per run; only the
        last run may be partly used."""
        left = size
        for first, count in runs:
            n = min(count * self.page_size, left)
            yield first * self.page_size, n
            left -= n

    def _gather(self, size: int, runs: list[tuple[int, int]], out: np.ndarray) -> np.ndarray:
        """Copy a block's runs, in order, into ``out`` (host memory)."""
        done = 0
        for start, n in self._segments(size, runs):
            if self._host is not None:
                np.copyto(out[done : done + n], self._host[start : start + n])
            else:
                out[done : done + n] = self._flat[start : start + n].cpu().numpy()
            done += n
        return out

    def put_many(self, blocks: list[Block]) -> None:
        need = sum(self.footprint(b.size) // self.page_size for b in blocks if b.key not in self._blocks)
        if need > self._free.free_pages:
            raise RuntimeError(f"bug: {self.name} asked for {need} pages with {self._free.free_pages} free")
        writes, nbytes = [], 0
        for b in blocks:
            if b.key in self._blocks:
                continue
            runs = self._free.allocate(-(-b.size // self.page_size))
            if b.payload is not None:  # None: the caller fills the pages (``reserves``)
                writes.append((runs, b.payload))
                nbytes += b.size
            self._blocks[b.key] = (b.size, runs)
        # Host pages: a large batch over several threads (``tiers.parallel``); a GPU slab's
        # copies queue on one stream anyway.
        parallel.each(lambda write: self._write(*write), writes, nbytes if self._host is not None else 0)

    def fill(self, key: bytes, payload: Payload) -> None:
        self._write(self._blocks[key][1], payload)

    def _write(self, runs: list[tuple[int, int]], payload: Payload) -> None:
        parts = [np.frombuffer(p, dtype=np.uint8) for p in payload_parts(payload)]
        size = sum(p.size for p in parts)
        if self._host is None:  # a GPU slab: one host buffer, then one copy per run
            import torch

            src = parts[0] if len(parts) == 1 else np.concatenate(parts)
            done = 0
            for start, n in self._segments(size, runs):
                self._flat[start : start + n].copy_(torch.from_numpy(src[done : done + n].copy()))
                done += n
            if self.shared:  # in place before any other process is told where it lies
                torch.cuda.current_stream(self.device).synchronize()
            return
        # Host pages: the parts straight into the runs, no join (a remote value comes in two).
        part, used = 0, 0  # the part being copied, and how much of it already was
        for start, n in self._segments(size, runs):
            done = 0
            while done < n:
                src = parts[part]
                take = min(n - done, src.size - used)
                self._host[start + done : start + done + take] = src[used : used + take]
                done, used = done + take, used + take
                if used == src.size:
                    part, used = part + 1, 0

    def delete_many(self, keys: list[bytes]) -> None:
        for key in keys:
            entry = self._blocks.pop(key, None)
            if entry is None:
                continue
            # New generation first: a reader copying these pages can tell they moved on.
            for first, count in entry[1]:
                self._gens[first : first + count] += 1
            self._free.free(entry[1])
        sharedmem.fence()  # the bumps are visible before any freed page is written again

    def locate_many(self, keys: list[bytes]) -> list[Location | None]:
        """Where each block lies: its runs as byte segments (one for nearly every block);
        ``None`` when absent, and for every block of a GPU slab that is not shared."""
        if not self.locates:
            return super().locate_many(keys)
        out: list[Location | None] = []
        for key in keys:
            entry = self._blocks.get(key)
            if entry is None:
                out.append(None)
                continue
            size, runs = entry
            generation = int(self._gens[runs[0][0]])
            out.append(Location(tuple(self._segments(size, runs)), size, generation, self.name))
        return out

    def view(self, where: Location) -> list[memoryview]:
        return [self._host_view[start : start + n] for start, n in where.segments]

    def current(self, located: list[Location]) -> list[bool]:
        return sharedmem.unchanged(self._gens, self.page_size, located).tolist()

    def share(self) -> tuple[list[int], dict]:
        """Read-only descriptors (the caller closes them) of the slab's bytes, on the host,
        and of its generations, and what a client needs to map them; on a GPU, with the
        IPC handle of the bytes and the GPU's UUID."""
        if not self.shared:
            raise ValueError(f"{self.name}: this slab is not shared")
        fds = [region.read_only_fd() for region in self._regions]
        layout = {"slab_bytes": self.capacity_bytes, "page_size": self.page_size, "num_pages": self.num_pages}
        if self._ipc_handle:
            layout |= {"handle": self._ipc_handle, "device_uuid": cuda_ipc.device_uuid(self.device)}
        return fds, layout

    def close(self) -> None:
        if self.pinned_memory:
            _cudart().cudaHostUnregister(self._host.ctypes.data)
            self.pinned_memory = False
        if not self.shared:
            return  # plain memory goes with the object
        self._flat = self._host = self._host_view = self._gens = None
        for region in self._regions:
            region.close()
        self._regions = []

    def describe(self) -> dict:
        return {**super().describe(), "page_size": self.page_size, "num_pages": self.num_pages,
                "free_pages": self._free.free_pages, "device": str(self.device),
                "pinned_memory": self.pinned_memory, "shared": self.shared}


def _committed(nbytes: int) -> np.ndarray:
    """Zeroed private memory whose every page is committed now (``MAP_POPULATE``)."""
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE), dtype=np.uint8)


def _cudart():
    """The CUDA runtime's bindings, ``None`` where CUDA is not available."""
    import torch

    return torch.cuda.cudart() if torch.cuda.is_available() else None


def dram_tier(capacity_bytes: int, page_size: int = DEFAULT_PAGE_SIZE, shared: bool = False,
              pinned: bool = False) -> SlabTier:
    return SlabTier("dram", capacity_bytes, page_size, "cpu", shared=shared, pinned=pinned)


def hbm_tier(capacity_bytes: int, page_size: int = DEFAULT_PAGE_SIZE, device: str = "cuda",
             shared: bool = False) -> SlabTier:
    import torch

    if not torch.cuda.is_available():
        raise ValueError("the HBM tier needs a CUDA device and none is visible; set its size to 0")
    return SlabTier("hbm", capacity_bytes, page_size, device, shared=shared)
