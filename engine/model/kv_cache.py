"""The paged KV pool: K and V of every layer in fixed-size pages (blocks).

One tensor holds everything, layer-major, so that a layer's pages form one contiguous
array that attention can gather from::

    kv: [layers, 2 (K, V), num_blocks, block_size, kv_heads, head_dim]

The cache service stores a page as one contiguous byte string laid out
``[layers, 2, block_size, kv_heads, head_dim]`` in the KV dtype; ``read_page`` and
``write_page`` convert between the two. This class owns the memory only; which page
belongs to whom is the ``BlockManager``'s business.
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
        # kv: [layers, 2, num_blocks, block_size, kv_heads, head_dim]
        layers, _, bs, heads, dim = layout.shape
        self.kv = torch.zeros(layers, 2, num_blocks, bs, heads, dim, dtype=layout.dtype, device=device)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, v) of one layer, each [num_blocks, block_size, kv_heads, head_dim] (views)."""
        return self.kv[index, 0], self.kv[index, 1]

    def read_page(self, block_id: int) -> bytes:
        """The page's K and V as bytes, laid out [layers, 2, block_size, kv_heads, head_dim]."""
        page = self.kv[:, :, block_id].contiguous()  # [L, 2, bs, H, D]
        return page.cpu().view(torch.uint8).numpy().tobytes()

    def write_page(self, block_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Fill a page from bytes in ``read_page``'s layout (e.g. a block from the cache service)."""
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
        page = raw.view(layout.dtype).view(layout.shape)  # [L, 2, bs, H, D]
        self.kv[:, :, block_id].copy_(page)
