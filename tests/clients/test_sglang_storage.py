"""kvtier as SGLang's HiCache storage backend, built by SGLang's own factory, against a real
``kvtier serve``.

SGLang's real host pool (``MHATokenToKVPoolHost``) cannot be imported without torchvision
and its CUDA-built ops, so the pools here are CPU tensors in its layouts with its
``get_data_page`` slicing: ``page_first`` ``[2, tokens, layers, heads, head_dim]`` (K and V
runs) and ``layer_first`` ``[2, layers, tokens, heads, head_dim]`` (2 x layers runs).
"""

import hashlib
import logging

import httpx
import pytest
import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageExtraInfo

from benchmarks.plugins_sglang import HostPool, PageShape, make_storage
from cacheserver.process import free_port
from clients.cache_client import CacheClient
from clients.sglang_storage import KvtierStorage, run_key

AUTH = {"X-Admin-Token": "secret"}  # module_server's admin token
PAGE, LAYERS, HEADS, DIM = 4, 2, 2, 4  # a page: 4 tokens; a run of page_first: 4*2*2*4*2 B = 128 B


def host_pool(layout: str = "page_first", dtype=torch.bfloat16, seed: int | None = None) -> HostPool:
    """A 16-page pool of tiny pages; random K/V when ``seed`` is given, else zeros."""
    pool = HostPool(PageShape(PAGE, LAYERS, HEADS, DIM, dtype), 16, layout)
    if seed is not None:
        pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=torch.Generator().manual_seed(seed)))
    return pool


def page_keys(name: str, n: int) -> list[str]:
    """SGLang-style chained SHA-256 page keys."""
    keys, prior = [], name.encode()
    for i in range(n):
        prior = hashlib.sha256(prior + i.to_bytes(4, "little")).digest()
        keys.append(prior.hex())
    return keys


def slots(*pages: int) -> torch.Tensor:
    """Host indices of whole pages, ``page_size`` slots each, as SGLang passes them."""
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages])


def backend(url: str, pool: HostPool, tp_rank: int = 0, model: str = "tiny-llama", **extra) -> KvtierStorage:
    """Built as SGLang's cache controller builds it: the factory, then the host pool."""
    return make_storage(url, pool, tp_rank=tp_rank, tp_size=2, model=model, **extra)


def page(pool: HostPool, p: int) -> torch.Tensor:
    return pool.get_data_page(p * PAGE, flat=True)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_pages_round_trip_to_another_replica(module_server, transport):
    url = module_server.data_url if transport == "tcp" else module_server.unix_url
    keys = page_keys(f"round-{transport}", 3)
    writer_pool, reader_pool = host_pool(seed=1), host_pool()
    writer, reader = backend(url, writer_pool), backend(url, reader_pool)
    assert type(writer) is KvtierStorage and writer.runs.count == 2 and writer.runs.nbytes == 128

    assert writer.batch_set(keys, [page(writer_pool, p) for p in range(3)]) is True
    assert reader.batch_exists(keys + page_keys("never-saved", 1)) == 3
    targets = [reader_pool.get_dummy_flat_data_page() for _ in range(4)]
    got = reader.batch_get(keys + page_keys("never-saved", 1), targets)
    assert got[3] is None and all(got[p] is targets[p] for p in range(3))
    for p in range(3):
        assert torch.equal(got[p], page(writer_pool, p))
    assert reader.exists(keys[0]) and not reader.exists(page_keys("never-saved", 1)[0])
    assert torch.equal(reader.get(keys[1], reader_pool.get_dummy_flat_data_page()), page(writer_pool, 1))

    stats = reader.stats()
    assert (stats["lookups"], stats["hit_pages"], stats["missed_pages"]) == (3, 4, 2)
    assert (stats["loaded_pages"], stats["loaded_bytes"], stats["load_misses"]) == (4, 4 * 256, 1)
    assert stats["failures"] == 0 and stats["bad_sizes"] == 0
    assert writer.stats()["saved_pages"] == 3 and writer.stats()["saved_bytes"] == 3 * 256
    if transport == "unix":  # copied straight out of the service's shared DRAM slab
        assert stats["client"]["mapped_bytes"] == 4 * 256


@pytest.mark.parametrize("layout", ["page_first", "layer_first"])
def test_v1_fills_the_host_pool_in_place(module_server, layout):
    keys = page_keys(f"v1-{layout}", 3)
    writer_pool, reader_pool = host_pool(layout, seed=2), host_pool(layout)
    writer = backend(module_server.unix_url, writer_pool)
    reader = backend(module_server.data_url, reader_pool)
    assert writer.runs.count == (2 if layout == "page_first" else 2 * LAYERS)

    assert writer.batch_set_v1(keys, slots(5, 6, 7)) == [True] * 3
    address = reader_pool.kv_buffer.data_ptr()
    assert reader.batch_get_v1(keys, slots(1, 9, 2)) == [True] * 3
    assert reader_pool.kv_buffer.data_ptr() == address
    for src, dst in [(5, 1), (6, 9), (7, 2)]:
        assert torch.equal(page(reader_pool, dst), page(writer_pool, src))
    assert torch.count_nonzero(page(reader_pool, 0)) == 0  # nothing else written

    # The generic path stores the same entries: a flat page reads back into place.
    more = page_keys(f"v1-{layout}-generic", 1)
    assert writer.batch_set(more, [page(writer_pool, 3)])
    assert reader.batch_get_v1(more, slots(4)) == [True]
    assert torch.equal(page(reader_pool, 4), page(writer_pool, 3))


def test_prefix_stops_at_the_first_miss(module_server):
    keys = page_keys("prefix", 4)
    pool = host_pool(seed=3)
    storage = backend(module_server.data_url, pool)
    assert storage.batch_set_v1(keys[:2], slots(0, 1)) == [True, True]
    assert storage.batch_set_v1(keys[3:], slots(3), HiCacheStorageExtraInfo(prefix_keys=keys[:3])) == [True]
    assert storage.batch_exists(keys) == 2
    assert storage.batch_exists(keys[1:]) == 1
    assert storage.batch_get_v1(keys, slots(10, 11, 12, 13)) == [True, True, False, True]


def test_parents_follow_the_chain_of_runs(module_server):
    """Run j's parent is run j-1; run 0's is the previous page's last run, from prefix keys
    when SGLang passes them, else the namespace root at depth 0."""
    keys = page_keys("parents", 3)
    pool = host_pool()
    storage = backend(module_server.data_url, pool)
    assert storage.batch_set_v1(keys[:1], slots(0)) == [True]
    after_first = HiCacheStorageExtraInfo(prefix_keys=keys[:1])
    assert storage.batch_set_v1(keys[1:], slots(1, 2), after_first) == [True] * 2
    chain = [run_key(storage.root, k, j) for k in keys for j in range(2)]

    def info(key: bytes) -> tuple[str, int]:
        got = httpx.get(f"{module_server.rest_url}/v1/blocks/{key.hex()}", headers=AUTH).json()
        return got["parent"], got["depth"]

    assert info(chain[0]) == (storage.root.hex(), 0)
    for depth in range(1, 6):
        assert info(chain[depth]) == (chain[depth - 1].hex(), depth)


def test_namespace_keeps_shards_models_layouts_and_tenants_apart(module_server):
    keys = page_keys("namespace", 2)
    url = module_server.data_url
    pool = host_pool()
    assert backend(url, pool).batch_set_v1(keys, slots(0, 1)) == [True] * 2
    assert backend(url, host_pool()).batch_exists(keys) == 2
    assert backend(url, host_pool(), tp_rank=1).batch_exists(keys) == 0
    assert backend(url, host_pool(), model="other-model").batch_exists(keys) == 0
    assert backend(url, host_pool(), salt="tenant-b").batch_exists(keys) == 0
    assert backend(url, host_pool(dtype=torch.float16)).batch_exists(keys) == 0
    assert backend(url, host_pool("layer_first")).batch_exists(keys) == 0


def test_bad_input_is_an_error_or_a_miss_never_a_wrong_page(module_server):
    keys = page_keys("bad", 2)
    pool = host_pool()
    storage = backend(module_server.data_url, pool)
    with pytest.raises(ValueError, match="host indices"):
        storage.batch_get_v1(keys, slots(0))
    with pytest.raises(ValueError, match="one flat page tensor per key"):
        storage.batch_set(keys, [page(pool, 0)])
    with pytest.raises(ValueError, match="runs of 128 B"):
        storage.batch_set(keys[:1], [torch.zeros(10)])
    unregistered = KvtierStorage(storage.config)
    with pytest.raises(RuntimeError, match="register_mem_pool_host"):
        unregistered.batch_exists(keys)

    # An entry of another size under a page's key (a stale format, a bug elsewhere) is a miss.
    with CacheClient(module_server.data_url) as c:
        c.put([(run_key(storage.root, keys[0], j), storage.root, j, b"x" * 64) for j in range(2)])
    assert storage.batch_exists(keys[:1]) == 1
    assert storage.batch_get_v1(keys[:1], slots(3)) == [False]
    assert storage.stats()["bad_sizes"] == 2 and storage.stats()["load_misses"] == 1
    assert storage.batch_get(keys[:1], [pool.get_dummy_flat_data_page()]) == [None]


def test_a_dead_service_gives_misses_and_counts_them(caplog):
    pool = host_pool()
    storage = backend(f"kvtier://127.0.0.1:{free_port()}", pool, timeout_s=0.5)
    keys = page_keys("dead", 2)
    assert storage.batch_exists(keys) == 0
    assert storage.batch_get_v1(keys, slots(0, 1)) == [False, False]
    assert storage.batch_set_v1(keys, slots(0, 1)) == [False, False]
    assert storage.batch_set(keys, [page(pool, 0), page(pool, 1)]) is False
    stats = storage.stats()
    assert (stats["hit_pages"], stats["loaded_pages"], stats["saved_pages"]) == (0, 0, 0)
    assert stats["failures"] == 4 and stats["load_misses"] == 2
    with caplog.at_level(logging.INFO, logger="clients.sglang_storage"):
        storage.close()
    assert "2 missed; loaded 0 pages (0 B), 2 not loaded; saved 0 pages (0 B); 4 failed calls" in caplog.text
