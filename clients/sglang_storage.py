"""``KvtierStorage``: kvtier as SGLang's HiCache storage tier (L3), tested with sglang 0.5.23.

SGLang loads it through its ``dynamic`` storage backend::

    --hicache-storage-backend dynamic --hicache-storage-backend-extra-config
      '{"backend_name": "kvtier", "module_path": "clients.sglang_storage",
        "class_name": "KvtierStorage", "interface_v1": 1, "url": "unix:///run/kvtier.sock"}'

SGLang's factory calls ``KvtierStorage(storage_config, kwargs)`` and then
``register_mem_pool_host(host_pool)``; no page moves before that. ``interface_v1: 1``
makes SGLang call ``batch_get_v1``/``batch_set_v1``, which move pages straight between
the host pool and the service (``CacheClient.get_into`` writes into the pool's memory;
on a ``unix://`` URL it copies out of the service's shared DRAM slab). Without it SGLang
calls ``batch_get``/``batch_set`` with flat page tensors. Both store the same entries.

Settings (extra config keys): ``url`` (else ``$KVTIER_URL``, else
``kvtier://127.0.0.1:8301``, the port ``kvtier serve`` listens on; several URLs,
comma-separated: sharded), ``timeout_s`` (1.0), ``salt`` (a tenant or deployment apart
from others on the same service), ``model_id`` (else SGLang's model name).

Keys. A page of the host pool is one or more contiguous runs of its memory (K and V for
the MHA ``page_first`` layouts, one run for MLA, 2 x layers runs for ``layer_first``);
each run is one kvtier entry, so a run is read into place with no staging copy. SGLang
names a page by a chained SHA-256 hex string (it already encodes the whole prefix and the
request's ``cache_salt``); the kvtier key of run ``j`` of that page is
``xxh3_128(root ‖ j ‖ page key)``, where ``root`` is the ``BlockHasher`` root of a
``Namespace`` naming the model, the page layout (dtype, run shape, runs per page, layout
name, page size) and the shard (TP rank and size, PP and attention-CP rank and size; no
TP rank for MLA, whose KV every TP rank holds whole). Replicas with the same model, layout
and shard share pages; anything else misses.

Parents. kvtier entries form chains: run ``j`` of a page has run ``j - 1`` as its parent,
run 0 has the last run of the page before it, and depth counts runs from the chain start.
The page before a call's first page is ``extra_info.prefix_keys[-1]``: SGLang passes the
prefix keys when ``"hicache_storage_pass_prefix_keys": true`` is in the extra config (its
default is off). A call with no (or empty) prefix keys starts its chain at the namespace
root with depth 0. That is exact for a sequence's first batch and, without prefix keys, a
guess for later ones; a parent only orders eviction in the service (leaves first) and
never decides which bytes a key returns, so a guessed parent can cost hit rate, never
correctness.

Outcomes. Misses, a dead or slow service and payloads of the wrong size are misses (a
page counts as loaded only when every run arrived whole at its exact size), counted in
``stats()`` and logged at INFO at most once a minute and on ``close()``. Calls before
``register_mem_pool_host``, host indices that do not match the keys, and settings that
cannot work raise ``ValueError``/``RuntimeError``: those are bugs or misconfiguration.
Thread-safe: SGLang calls from its prefetch and backup threads at once.

Not covered: the ``*_v2`` calls SGLang makes for hybrid models' extra pools (Mamba, SWA,
DSA indexer) raise ``NotImplementedError`` as in ``HiCacheStorage``; ``clear()`` (SGLang's
flush) leaves the shared service alone and says so.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import xxhash
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from clients.guard import ClientOptions
from clients.sharded import open_client
from clients.url import service_url
from hashing.keys import BlockHasher, Namespace

log = logging.getLogger(__name__)

_LOG_EVERY_S = 60.0
# SGLang's own keys, left in the same dict.
_SGLANG_KEYS = {"backend_name", "module_path", "class_name", "interface_v1", "file_storage_path"}


@dataclass(frozen=True)
class KvtierSettings:
    url: str
    timeout_s: float = 1.0
    salt: str = ""
    model_id: str = ""

    @classmethod
    def from_extra_config(cls, extra: dict | None) -> KvtierSettings:
        extra = dict(extra or {})
        unknown = set(extra) - _SGLANG_KEYS - {"url", "timeout_s", "salt", "model_id"}
        if unknown:
            log.warning("kvtier storage ignores extra config keys %s", sorted(unknown))
        url = service_url(extra.get("url"))
        return cls(url, float(extra.get("timeout_s", 1.0)), str(extra.get("salt", "")),
                   str(extra.get("model_id", "")))


@dataclass
class StorageStats:
    """What the backend did, in pages (a page is all its runs) and payload bytes."""

    lookups: int = 0
    hit_pages: int = 0  # leading pages found by batch_exists
    missed_pages: int = 0  # pages asked for by batch_exists and not found
    loaded_pages: int = 0
    loaded_bytes: int = 0
    load_misses: int = 0  # pages asked for by a get that did not arrive whole
    saved_pages: int = 0
    saved_bytes: int = 0
    bad_sizes: int = 0  # runs that arrived at another size than the page layout's


class PageRuns:
    """How one host-pool page lies in memory: ``count`` contiguous runs of ``nbytes``.

    Read from SGLang's own ``host_pool.get_data_page(index, flat=False)`` view: its leading
    dimensions are walked, the trailing ones are contiguous. The flat page SGLang's
    generic path hands over is the same runs back to back, in the same order.
    """

    def __init__(self, host_pool: Any):
        self.host_pool = host_pool
        self.page_size = int(host_pool.page_size)
        page = host_pool.get_data_page(0, flat=False)
        self.lead = next(d for d in range(page.dim() + 1) if page[(0,) * d].is_contiguous())
        first = page[(0,) * self.lead]
        self.count = page.numel() // first.numel()
        self.nbytes = first.numel() * first.element_size()
        self.name = (f"sglang/{getattr(host_pool, 'layout', '?')}/{page.dtype}/page{tuple(page.shape)}"
                     f"/run{tuple(first.shape)}x{self.count}")

    def at(self, index: int) -> list[memoryview]:
        """Writable byte views of the runs of the page whose first token slot is ``index``."""
        page = self.host_pool.get_data_page(index, flat=False)
        return [_bytes(page[i]) for i in itertools.product(*map(range, page.shape[: self.lead]))]

    def split(self, flat: torch.Tensor) -> list[memoryview]:
        """A flat page tensor (SGLang's generic path) as byte views of its runs."""
        whole = _bytes(flat)
        if whole.nbytes != self.count * self.nbytes:
            raise ValueError(f"a flat page of {whole.nbytes} B is not {self.count} runs of {self.nbytes} B")
        return [whole[i * self.nbytes : (i + 1) * self.nbytes] for i in range(self.count)]


def _bytes(t: torch.Tensor) -> memoryview:
    if not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"page memory must be contiguous host memory, got {t.device} strides {t.stride()}")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def shard_name(config: HiCacheStorageConfig) -> str:
    """The part of the namespace that says which slice of the KV a rank holds."""
    tp = "tp-replicated" if config.is_mla_model else f"tp{config.tp_rank}of{config.tp_size}"
    return f"{tp}/pp{config.pp_rank}of{config.pp_size}/cp{config.attn_cp_rank}of{config.attn_cp_size}"


def run_key(root: bytes, page_key: str, run: int) -> bytes:
    """The kvtier key of run ``run`` of the page SGLang names ``page_key``: pure, 16 bytes."""
    return xxhash.xxh3_128_digest(root + run.to_bytes(2, "little") + page_key.encode())


class KvtierStorage(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: dict | None = None):
        self.config = storage_config
        self.settings = KvtierSettings.from_extra_config(storage_config.extra_config)
        options = ClientOptions(timeout=self.settings.timeout_s)
        self.client = open_client(self.settings.url, options)
        self.runs: PageRuns | None = None
        self.root = b""
        self._stats = StorageStats()
        self._stats_lock = threading.Lock()
        self._logged_at = time.monotonic()
        log.info("kvtier storage for %s (%s) at %s", storage_config.model_name, shard_name(storage_config),
                 self.settings.url)

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self.runs = PageRuns(mem_pool_host)
        namespace = Namespace(model_id=self.settings.model_id or (self.config.model_name or ""),
                              kv_layout=f"{self.runs.name}/{shard_name(self.config)}",
                              salt=self.settings.salt)
        self.root = BlockHasher(namespace, block_size=self.runs.page_size).root

    # -- keys and chains ---------------------------------------------------------------

    def _layout(self) -> PageRuns:
        """The registered host pool's page runs (a call before registration is a bug)."""
        if self.runs is None:
            raise RuntimeError("kvtier storage has no host pool: SGLang calls register_mem_pool_host first")
        return self.runs

    def _keys(self, page_keys: list[str]) -> list[bytes]:
        count = self._layout().count
        for k in page_keys:
            if not isinstance(k, str) or not k:
                raise ValueError(f"SGLang page keys are non-empty strings, got {k!r}")
        return [run_key(self.root, k, j) for k in page_keys for j in range(count)]

    def _entries(self, page_keys: list[str], runs: list[memoryview], extra_info) -> list:
        prefix = (extra_info.prefix_keys if extra_info is not None else None) or []
        keys = self._keys(page_keys)
        parent = self._keys(prefix[-1:])[-1] if prefix else self.root
        depth = len(prefix) * self.runs.count
        entries = []
        for i, (key, payload) in enumerate(zip(keys, runs, strict=True)):
            entries.append((key, parent, depth + i, payload))
            parent = key
        return entries

    # -- the calls ------------------------------------------------------------------------

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        """How many leading pages the service holds whole: one lookup."""
        pages = len(self.client.lookup(self._keys(keys))) // self.runs.count
        self._count(lookups=1, hit_pages=pages, missed_pages=len(keys) - pages)
        return pages

    def exists(self, key: str) -> bool:
        return self.batch_exists([key]) == 1

    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        """Fill the host-pool pages at ``host_indices`` (``page_size`` slots per key) in place."""
        return self._load(keys, self._pool_runs(keys, host_indices))

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        """Save the host-pool pages at ``host_indices``; one put. All true or all false."""
        return [self._save(keys, self._pool_runs(keys, host_indices), extra_info)] * len(keys)

    def batch_get(self, keys: list[str], target_locations: list[torch.Tensor] | None = None,
                  target_sizes: Any = None) -> list[torch.Tensor | None]:
        """Fill SGLang's flat page tensors; each is returned when it arrived whole, else None."""
        if target_locations is None or len(target_locations) != len(keys):
            raise ValueError("batch_get needs one flat page tensor per key")
        runs = [r for t in target_locations for r in self._split(t)]
        loaded = self._load(keys, runs)
        return [t if ok else None for t, ok in zip(target_locations, loaded, strict=True)]

    def get(self, key: str, target_location: torch.Tensor | None = None,
            target_sizes: Any = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location])[0]

    def batch_set(self, keys: list[str], values: list[torch.Tensor] | None = None,
                  target_locations: Any = None, target_sizes: Any = None) -> bool:
        if values is None or len(values) != len(keys):
            raise ValueError("batch_set needs one flat page tensor per key")
        return self._save(keys, [r for v in values for r in self._split(v.contiguous())], None)

    def set(self, key: str, value: torch.Tensor | None = None, target_location: Any = None,
            target_sizes: Any = None) -> bool:
        return self.batch_set([key], [value])

    def clear(self) -> bool:
        log.warning("kvtier storage is shared by every replica; flush it with the service's admin API")
        return False

    def close(self) -> None:
        self._log_stats()
        self.client.close()

    def stats(self) -> dict:
        """The backend's counters; ``failures``: calls its client answered with their fallback
        (service down, slow, or refusing); ``client``: the client's own."""
        with self._stats_lock:
            ours = asdict(self._stats)
        calls = self.client.counters.as_dict()
        return {**ours, "failures": calls["failures"], "client": calls}

    # -- the machinery ----------------------------------------------------------------------

    def _split(self, flat: torch.Tensor) -> list[memoryview]:
        return self._layout().split(flat)

    def _pool_runs(self, keys: list[str], host_indices: torch.Tensor) -> list[memoryview]:
        runs = self._layout()
        size = runs.page_size
        if host_indices.numel() != len(keys) * size:
            raise ValueError(f"{len(keys)} pages need {len(keys) * size} host indices, "
                             f"got {host_indices.numel()}")
        firsts = host_indices[::size].tolist()
        return [r for first in firsts for r in runs.at(first)]

    def _load(self, keys: list[str], runs: list[memoryview]) -> list[bool]:
        run_keys, per_page = self._keys(keys), self.runs.count
        sizes: list[int | None] = []
        step = self.client.options.max_batch
        for i in range(0, len(run_keys), step):
            sizes += self.client.get_into(run_keys[i : i + step], runs[i : i + step])
        bad = sum(1 for n in sizes if n is not None and n != self.runs.nbytes)
        loaded = [all(n == self.runs.nbytes for n in sizes[p * per_page : (p + 1) * per_page])
                  for p in range(len(keys))]
        pages = sum(loaded)
        self._count(loaded_pages=pages, loaded_bytes=pages * per_page * self.runs.nbytes,
                    load_misses=len(keys) - pages, bad_sizes=bad)
        return loaded

    def _save(self, keys: list[str], runs: list[memoryview], extra_info) -> bool:
        entries = self._entries(keys, runs, extra_info)
        failed = self.client.put(entries) is None
        pages = 0 if failed else len(keys)
        self._count(saved_pages=pages, saved_bytes=pages * self.runs.count * self.runs.nbytes)
        return not failed

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, n in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)
            due = time.monotonic() - self._logged_at >= _LOG_EVERY_S
        if due:
            self._log_stats()

    def _log_stats(self) -> None:
        with self._stats_lock:
            self._logged_at = time.monotonic()
        s = self.stats()
        log.info("kvtier storage: %d lookups, %d pages hit, %d missed; "
                 "loaded %d pages (%d B), %d not loaded; saved %d pages (%d B); "
                 "%d failed calls, %d runs of a wrong size",
                 s["lookups"], s["hit_pages"], s["missed_pages"], s["loaded_pages"], s["loaded_bytes"],
                 s["load_misses"], s["saved_pages"], s["saved_bytes"], s["failures"], s["bad_sizes"])
