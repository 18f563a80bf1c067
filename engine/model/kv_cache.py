"""The paged KV pool: K and V of every layer in fixed-size pages (blocks).

One tensor holds everything, block-major, so that one block (K and V of every layer) is
one contiguous run: saving or loading a block is one copy (one DMA on a GPU)::

    kv: [num_blocks + 1, layers, 2 (K, V), block_size, kv_heads, head_dim]
         page ``num_blocks`` is scratch: padded rows of a CUDA-graph step write there

A layer's K (or V) is a strided view ``[num_blocks + 1, block_size, kv_heads, head_dim]``
whose token rows stay contiguous, which is all attention needs. The cache service stores
a page as the same bytes, ``[layers, 2, block_size, kv_heads, head_dim]`` in the KV
dtype. This class owns the memory only; which page belongs to whom is the
``BlockManager``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.dtype import dtype_name


@dataclass(frozen=True)
class PageLayout:
    """The shape and dtype of one page: what two engines must share to exchange blocks."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        """[layers, 2, block_size, kv_heads, head_dim]: a page as bytes."""
        return (self.num_layers, 2, self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def nbytes(self) -> int:
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        n = 1
        for dim in self.shape:
            n *= dim
        return n * itemsize

    @property
    def name(self) -> str:
        """The KV layout string that goes into block keys (block size apart, which the
        hasher adds itself), e.g. ``bfloat16/L30/H3/D64``."""
        return kv_layout(self.dtype, self.num_layers, self.num_kv_heads, self.head_dim)


def kv_layout(dtype: torch.dtype, num_layers: int, num_kv_heads: int, head_dim: int) -> str:
    return f"{dtype_name(dtype)}/L{num_layers}/H{num_kv_heads}/D{head_dim}"


class KVCache:
    def __init__(self, layout: PageLayout, num_blocks: int, device: str = "cpu"):
        self.layout = layout
        self.num_blocks = num_blocks
        self.block_size = layout.block_size
        self.scratch_block = num_blocks
        # kv: [num_blocks + 1, layers, 2, block_size, kv_heads, head_dim]
        self.kv = torch.zeros(num_blocks + 1, *layout.shape, dtype=layout.dtype, device=device)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) of one layer, each [num_blocks + 1, block_size, kv_heads, head_dim] (strided views)."""
        return self.kv[:, index, 0], self.kv[:, index, 1]

    def page(self, block_id: int) -> torch.Tensor:
        """The page as [nbytes] uint8, a view of the pool (no copy), on the pool's device: its
        K and V laid out [layers, 2, block_size, kv_heads, head_dim], the bytes a save stores."""
        return self.kv[block_id].view(-1).view(torch.uint8)

    def write_page(self, block_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Fill a page from bytes in ``page``'s layout (e.g. a block from the cache service)."""
        layout = self.layout
        if len(payload) != layout.nbytes:
            raise ValueError(
                f"a page payload has {layout.nbytes} bytes for layout {layout.shape} "
                f"{dtype_name(layout.dtype)}, got {len(payload)}"
            )
        writable = isinstance(payload, bytearray) or (
            isinstance(payload, memoryview) and not payload.readonly)
        # torch wants a writable buffer; only a read-only one (bytes) is copied first.
        raw = torch.frombuffer(payload if writable else bytearray(payload), dtype=torch.uint8)
        self.kv[block_id].copy_(raw.view(layout.dtype).view(layout.shape))
