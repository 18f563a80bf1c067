"""GPU memory one process exports and another on the same GPU opens (CUDA IPC): the
service's HBM slab, copied from straight into an engine's KV pages, GPU to GPU.

Every CUDA IPC line of kvtier is here. They need CuPy (the ``gpu`` extra), whose runtime
bindings hold the four calls torch does not offer: allocate, export (a 64-byte handle),
open, close. The exporting process allocates the slab itself (one ``cudaMalloc``, so the
handle opens at the slab's first byte) and keeps it for as long as the service runs.

A handle cannot be opened by the process that made it, nor on another GPU: an engine
compares ``device_uuid`` with the one the service announces and opens only on a match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a client that never maps GPU memory does without torch
    import torch


def available() -> bool:
    """CUDA and CuPy both present (CuPy is the ``gpu`` extra)."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def _index(device: torch.device) -> int:
    import torch

    return device.index if device.index is not None else torch.cuda.current_device()


def device_uuid(device: torch.device) -> str:
    """What names a GPU across processes (its ordinal depends on CUDA_VISIBLE_DEVICES)."""
    import torch

    return str(torch.cuda.get_device_properties(device).uuid)


def allocate(nbytes: int, device: torch.device) -> tuple[torch.Tensor, bytes]:
    """``nbytes`` of zeroed device memory in one allocation of its own, as a uint8 tensor,
    and the IPC handle that opens it in another process."""
    import cupy

    with cupy.cuda.Device(_index(device)):
        memory = cupy.cuda.Memory(nbytes)  # freed when the last view of it goes
        cupy.cuda.runtime.memset(memory.ptr, 0, nbytes)
        handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(memory.ptr))
        array = cupy.ndarray((nbytes,), cupy.uint8, cupy.cuda.MemoryPointer(memory, 0))
    return torch.from_dlpack(array), handle


class _Opened:
    """An opened handle; closed when the last tensor over it is gone."""

    def __init__(self, ptr: int, index: int):
        self.ptr, self.index = ptr, index

    def __del__(self) -> None:
        import cupy

        with cupy.cuda.Device(self.index):
            cupy.cuda.runtime.ipcCloseMemHandle(self.ptr)


def open_handle(handle: bytes, nbytes: int, device: torch.device) -> torch.Tensor:
    """Another process's exported memory as a uint8 tensor on ``device`` (the same GPU)."""
    import cupy
    import torch

    rt = cupy.cuda.runtime
    index = _index(device)
    with cupy.cuda.Device(index):
        ptr = rt.ipcOpenMemHandle(handle, rt.cudaIpcMemLazyEnablePeerAccess)
        memory = cupy.cuda.UnownedMemory(ptr, nbytes, _Opened(ptr, index), index)
        array = cupy.ndarray((nbytes,), cupy.uint8, cupy.cuda.MemoryPointer(memory, 0))
    return torch.from_dlpack(array)
