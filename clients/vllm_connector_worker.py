"""The worker's half of kvtier's vLLM connector: loads planned blocks into vLLM's KV pages
before the forward pass, and snapshots filled blocks after it for a background save.

::

    start_load_kv   keys ──get_into──► host staging [n, layers, H, N, C] ──► kv[layer][block_ids]
    wait_for_save   kv[layer][block_ids] ──► save slots [n, layers, H, N, C] ──► save queue ──put──► service

Loads are synchronous: vLLM schedules them as sync loads and runs them before the forward
pass that reads the pages. A block the service no longer returns whole is reported to
vLLM (``take_failed_block_ids``), with every block after it in the request, and vLLM
recomputes them (``kv_load_failure_policy: recompute``). Saves copy the blocks out of the
pages at once into slots of a ``StagingRing`` (vLLM may reuse the pages after the step)
and hand them to one background thread that puts them and frees the slots; the forward
pass never waits on the network, and with no free slot blocks are dropped (counted)
rather than waited for. Both host buffers are allocated once and reused.

On CUDA tensors both directions go through host memory (a device gather, then one copy
to or from the host): the direct paths (the service's DRAM slab registered with
cudaHostRegister, CUDA IPC of its HBM tier) are not done yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clients.cache_client import CacheClient
from clients.sharded import ShardedCacheClient
from clients.vllm_connector_meta import LOG_EVERY_REQUESTS, BlockLayout, BlockRun, WorkerStats, log
from engine.runtime.connector import CacheConnector, ConnectorConfig, SavedBlock
from engine.runtime.staging import Staged, StagingRing
from hashing.keys import BlockHasher

_STAGING_BYTES = 64 << 20  # one get_into batch at most: bounds the host staging buffer


class WorkerSide:
    def __init__(self, client: CacheClient | ShardedCacheClient, url: str, layout: BlockLayout,
                 hasher_of: Callable[[BlockRun], BlockHasher]):
        self.client = client
        self.layout = layout
        self.hasher_of = hasher_of  # this rank's hasher for a run's request
        self.stats = WorkerStats()
        config = ConnectorConfig(url)
        self.saver = CacheConnector(config, client)
        # Host memory allocated once and reused: fresh buffers cost page faults on every
        # call. Loads: one get_into batch [per_batch, block_bytes]; saves: a slot per queued
        # block, freed once it was put (on the host: vLLM's CUDA pages are copied to it).
        self._per_batch = max(1, _STAGING_BYTES // layout.block_bytes)
        self._load_staging = torch.empty((self._per_batch, layout.block_bytes), dtype=torch.uint8)
        self._load_rows = [memoryview(row) for row in self._load_staging.numpy()]
        self._save_slots = StagingRing(config.save_queue_blocks, layout.block_bytes, "cpu")
        self.layers: list[torch.Tensor] = []  # each [num_blocks, H, N, C]: vLLM's views
        self._failed: set[int] = set()

    def register(self, kv_caches: dict[str, torch.Tensor], layer_names: list[str], num_blocks: int) -> None:
        lay = self.layout
        for name in layer_names:
            kv = kv_caches[name]  # [num_blocks, H, N, C]
            expected = (num_blocks, lay.num_heads, lay.block_size, lay.content_bytes // kv.element_size())
            if tuple(kv.shape) != expected or str(kv.dtype).removeprefix("torch.") != lay.dtype:
                raise ValueError(f"kvtier connector: layer {name} has a {kv.dtype} KV cache of shape "
                                 f"{tuple(kv.shape)}; expected {lay.dtype} {expected} (blocks, heads, "
                                 "tokens, K+V). Kernel block splitting is not supported: set --block-size "
                                 "to the attention backend's block size")
        self.layers = [kv_caches[name] for name in layer_names]

    # -- loads ---------------------------------------------------------------------------

    def load(self, runs: list[BlockRun]) -> None:
        for run in runs:
            self._count_run()
            keys = self.hasher_of(run).keys(run.token_ids)[run.first : run.end]
            per_batch = self._per_batch
            for start in range(0, len(keys), per_batch):
                batch = keys[start : start + per_batch]
                loaded = self._load_batch(batch, run.block_ids[start : start + per_batch])
                if loaded < len(batch):  # a prefix is only useful whole: the rest is recomputed
                    self._failed.update(run.block_ids[start + loaded :])
                    break

    def _load_batch(self, keys: list[bytes], block_ids: list[int]) -> int:
        """Load the leading blocks that arrived whole into their pages; how many they were."""
        lay = self.layout
        # staging: [n, layers, H, N, C] as bytes, one block per row
        sizes = self.client.get_into(keys, self._load_rows[: len(keys)])
        whole = next((i for i, size in enumerate(sizes) if size != lay.block_bytes), len(sizes))
        if whole:
            self._scatter(self._load_staging[:whole], block_ids[:whole])
            self.stats.loaded_blocks += whole
            self.stats.loaded_tokens += whole * lay.block_size
            self.stats.loaded_bytes += whole * lay.block_bytes
        self.stats.load_failures += len(keys) - whole
        return whole

    def _scatter(self, staging: torch.Tensor, block_ids: list[int]) -> None:
        first = self.layers[0]
        ids = torch.tensor(block_ids, device=first.device)
        # blocks: [n, layers, H, N, C] in the cache's dtype, on its device
        blocks = staging.view(first.dtype).view(len(block_ids), len(self.layers), *first.shape[1:])
        blocks = blocks.to(first.device)
        for layer, kv in enumerate(self.layers):
            kv[ids] = blocks[:, layer]

    def take_failed_block_ids(self) -> set[int]:
        failed, self._failed = self._failed, set()
        return failed

    # -- saves ---------------------------------------------------------------------------

    def save(self, runs: list[BlockRun]) -> None:
        for run in runs:
            self._count_run()
            hasher = self.hasher_of(run)
            keys = hasher.keys(run.token_ids)
            staged = self._gather(run.block_ids)  # the leading blocks that got a slot
            blocks = [
                SavedBlock(keys[depth], keys[depth - 1] if depth else hasher.root, depth, s.view, s)
                for depth, s in zip(range(run.first, run.end), staged, strict=False)
            ]
            self.saver.save(blocks)
            if len(staged) < len(run.block_ids):
                self.saver.drop(len(run.block_ids) - len(staged))
            self.stats.queued_blocks += len(blocks)

    def _gather(self, block_ids: list[int]) -> list[Staged]:
        """Copy the leading blocks into free save slots, layer by layer (a copy: vLLM may
        reuse the pages after this step); fewer when fewer slots are free."""
        staged = self._save_slots.take(len(block_ids))
        if not staged:
            return []
        first = self.layers[0]
        ids = torch.tensor(block_ids[: len(staged)], device=first.device)
        slots = torch.tensor([s.slot for s in staged])
        # rows: [slots, layers, H, N, C] in the cache's dtype, over the ring's bytes
        rows = self._save_slots.host.view(first.dtype).view(-1, len(self.layers), *first.shape[1:])
        for layer, kv in enumerate(self.layers):
            rows[slots, layer] = kv[ids].cpu()
        return staged

    def _count_run(self) -> None:
        self.stats.runs += 1
        if self.stats.runs % LOG_EVERY_REQUESTS == 0:
            self.log_stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued block was sent (or failed); False on timeout."""
        return self.saver.flush(timeout)

    def close(self) -> None:
        self.saver.close()
        self.log_stats()

    def log_stats(self) -> None:
        log.info("kvtier connector (worker): %s; saves: %s; client: %s", self.stats.as_dict(),
                 self.saver.stats.as_dict(), self.client.counters.as_dict())
