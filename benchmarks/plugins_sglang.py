"""``kvtier bench plugins``, SGLang's side: ``KvtierStorage`` built by SGLang's own factory
over a CPU host pool, beside raw ``CacheClient`` calls on the same page memory.

The pool is a CPU stand-in for SGLang's ``MHATokenToKVPoolHost`` in its ``page_first``
layout (the real one needs CUDA-built ops), with its ``get_data_page`` slicing::

    kv_buffer: [2, tokens, layers, heads, head_dim]    a page: [:, first : first + page_size]
               pages [0, P): sources   [P, 2P): the plugin's targets   [2P, 3P): raw targets

A page is 2 contiguous runs (K, V), each one kvtier entry. The plugin saves and loads
with ``batch_set_v1``/``batch_get_v1``; raw puts the same run views under keys of its own
and ``get_into``s them into the raw targets' runs: the plugin's cost is its keys, chains,
run views and counters on top of the same client calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from clients.cache_client import CacheClient
from clients.guard import ClientOptions


@dataclass(frozen=True)
class PageShape:
    """One host-pool page; the default is Llama-3-8B's: 64 tokens x 32 layers x K,V x 8
    heads x 128 x bf16 = 8 MiB, two runs of 4 MiB."""

    page_size: int = 64
    layers: int = 32
    heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16

    @property
    def nbytes(self) -> int:
        return 2 * self.page_size * self.layers * self.heads * self.head_dim * self.dtype.itemsize


class HostPool:
    """SGLang's MHA host pool on the CPU: its buffer shapes and its ``get_data_page`` slicing,
    ``page_first`` ``[2, tokens, layers, heads, head_dim]`` (a page: 2 runs, K and V) or
    ``layer_first`` ``[2, layers, tokens, heads, head_dim]`` (2 x layers runs). The tests of
    ``clients.sglang_storage`` use it too."""

    def __init__(self, shape: PageShape, pages: int, layout: str = "page_first"):
        self.shape, self.layout, self.page_size, self.dtype = shape, layout, shape.page_size, shape.dtype
        tokens = pages * shape.page_size
        dims = (tokens, shape.layers) if layout == "page_first" else (shape.layers, tokens)
        self.kv_buffer = torch.zeros(2, *dims, shape.heads, shape.head_dim, dtype=shape.dtype)

    def get_data_page(self, index: int, flat: bool = True) -> torch.Tensor:
        page = self.pages_at(index, self.page_size)
        return page.flatten() if flat else page

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros(self.shape.nbytes // self.dtype.itemsize, dtype=self.dtype)

    def pages(self, first: int, n: int) -> torch.Tensor:
        """Pages ``[first, first + n)``, a view of the buffer."""
        return self.pages_at(first * self.page_size, n * self.page_size)

    def pages_at(self, token: int, tokens: int) -> torch.Tensor:
        """Token slots ``[token, token + tokens)`` of every layer, a view of the buffer."""
        if self.layout == "page_first":
            return self.kv_buffer[:, token : token + tokens]
        return self.kv_buffer[:, :, token : token + tokens]

    def slots(self, first: int, n: int) -> torch.Tensor:
        """Host indices of pages ``[first, first + n)``, as SGLang passes them."""
        return torch.arange(first * self.page_size, (first + n) * self.page_size)


def make_storage(url: str, pool: HostPool, tp_rank: int = 0, tp_size: int = 1,
                 model: str = "bench-llama-3-8b", **extra):
    """``KvtierStorage`` as SGLang's cache controller builds it: the factory, then the pool;
    ``extra``: more keys of the backend's extra config (``timeout_s``, ``salt``, ...)."""
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig
    from sglang.srt.mem_cache.storage import StorageBackendFactory

    config = HiCacheStorageConfig(
        tp_rank=tp_rank, tp_size=tp_size, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1,
        is_mla_model=False, enable_storage_metrics=False, is_page_first_layout=pool.layout == "page_first",
        model_name=model,
        extra_config={"backend_name": "kvtier", "module_path": "clients.sglang_storage",
                      "class_name": "KvtierStorage", "interface_v1": 1, "url": url, **extra})
    storage = StorageBackendFactory.create_backend("dynamic", config, pool)
    storage.register_mem_pool_host(pool)
    return storage


class SGLangPath:
    """One transport's contestants for a turn; ``prepare``, the four moves, ``check``."""

    engine = "sglang"

    def __init__(self, url: str, shape: PageShape, pages: int, timeout_s: float):
        from clients.sglang_storage import run_key

        self.run_key = run_key
        self.pages, self.nbytes = pages, pages * shape.nbytes
        self.pool = HostPool(shape, 3 * pages)
        self.pool.pages(0, pages).copy_(torch.randn(self.pool.pages(0, pages).shape).to(shape.dtype))
        self.storage = make_storage(url, self.pool, timeout_s=timeout_s)
        self.raw = CacheClient(url, ClientOptions(timeout=timeout_s))
        runs = self.storage.runs
        self.sources = [r for p in range(pages) for r in runs.at(p * shape.page_size)]
        self.raw_targets = [r for p in range(2 * pages, 3 * pages) for r in runs.at(p * shape.page_size)]
        self.copy_target = np.empty(self.nbytes, dtype=np.uint8)  # memcpy copies the runs in here
        n = runs.nbytes
        self.copy_runs = [self.copy_target[i * n : (i + 1) * n] for i in range(len(self.sources))]
        self.keys: list[str] = []
        self.raw_keys: list[bytes] = []

    def prepare(self, turn: int) -> None:
        """Fresh keys (each put really stores) and zeroed targets (each load really lands)."""
        nonce = os.urandom(8).hex()
        self.keys = [f"{nonce}-{turn}-{p}" for p in range(self.pages)]
        self.raw_keys = [os.urandom(16) for _ in self.sources]
        self.pool.pages(self.pages, 2 * self.pages).zero_()
        self.copy_target.fill(0)

    def plugin_save(self) -> None:
        assert self.storage.batch_set_v1(self.keys, self.pool.slots(0, self.pages)) == [True] * self.pages

    def plugin_load(self) -> None:
        got = self.storage.batch_get_v1(self.keys, self.pool.slots(self.pages, self.pages))
        assert got == [True] * self.pages, got

    def raw_save(self) -> None:
        root = b"\0" * 16
        entries = [(k, self.raw_keys[i - 1] if i else root, i, run)
                   for i, (k, run) in enumerate(zip(self.raw_keys, self.sources, strict=True))]
        assert self.raw.put(entries) == len(entries)

    def raw_load(self) -> None:
        sizes = self.raw.get_into(self.raw_keys, self.raw_targets)
        assert sizes == [r.nbytes for r in self.raw_targets], sizes

    def memcpy(self) -> None:
        for src, dst in zip(self.sources, self.copy_runs, strict=True):
            np.copyto(dst, np.frombuffer(src, np.uint8))

    def check(self) -> None:
        """Every target holds the sources' bytes; the turn's entries are deleted."""
        source = self.pool.pages(0, self.pages)
        assert torch.equal(self.pool.pages(self.pages, self.pages), source), "plugin load: wrong bytes"
        assert torch.equal(self.pool.pages(2 * self.pages, self.pages), source), "raw load: wrong bytes"
        assert np.array_equal(self.copy_target, np.concatenate(self.sources)), "memcpy: wrong bytes"
        count = self.storage.runs.count
        plugin_keys = [self.run_key(self.storage.root, k, j) for k in self.keys for j in range(count)]
        assert self.raw.delete(plugin_keys + self.raw_keys) == 2 * len(self.raw_keys)

    def counters(self) -> dict:
        s, raw = self.storage.stats(), self.raw.counters
        return {"plugin_failures": s["failures"], "plugin_mapped_bytes": s["client"]["mapped_bytes"],
                "raw_failures": raw.failures, "raw_mapped_bytes": raw.mapped_bytes}

    def close(self) -> None:
        self.storage.close()
        self.raw.close()
