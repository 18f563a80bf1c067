"""The engine's side of the cache service: fetch a request's cached prefix, save new blocks.

::

    engine thread                         connector threads               cache service
    add_request ──start_fetch(keys)──►    lookup(keys) → n cached ────►   (data plane)
                                          get_mapped(keys[:n]) → blocks ◄─
    step ◄──────completed()───────────    FetchResult
         (blocks loaded into pages: see page_loader.py; then the request is queued)
    step ──save(blocks)──► bounded queue ──► put(batch) ───────────────►
         (pages staged: see staging.py)      (wait for each staged copy; release its slot after)

The engine thread never waits on the network: fetches run on a small pool, and a fetch
that outlives ``fetch_timeout_s`` is given up (the request prefills everything itself).
Saves go to a bounded queue drained by one thread in batches; when the queue is full a
block is dropped and counted, never waited for. The engine's blocks come as ``Staged``
slots of its staging ring (as many as ``save_queue_blocks``, so the ring is the bound that
bites): the saver waits for a slot's copy, puts the slot's view, and releases the slot.

The client below never raises for the service's failures (down, slow, bad reply): they
come back as misses, so every request still completes; ``stats`` and the client's counters
say what happened, and a log line (at most one per ``_LOG_EVERY_S``) says it to the operator.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clients.cache_client import CacheClient
from clients.guard import ClientOptions
from clients.sharded import ShardedCacheClient, open_client, split_urls
from clients.shared import Mapped

if TYPE_CHECKING:  # the connector itself needs no torch
    from engine.runtime.staging import Staged

log = logging.getLogger(__name__)

_LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class ConnectorConfig:
    url: str  # kvtier://host:port or unix:///path; several, comma-separated: sharded
    fetch_timeout_s: float = 2.0  # the longest a request waits for its cached prefix
    save_queue_blocks: int = 1024  # blocks waiting to be saved (an engine's staging slots); more are dropped
    save_batch_blocks: int = 32  # blocks per put request
    fetch_threads: int = 2
    client_timeout_s: float = 2.0
    device: str | None = None  # the engine's GPU: the service's HBM tier is opened there if it is that GPU

    def __post_init__(self) -> None:
        for url in split_urls(self.url):
            if not url.startswith(("kvtier://", "unix://")):
                raise ValueError(f"cache URL {url!r} must be kvtier://host:port or unix:///path "
                                 "(several: comma-separated)")
        if self.fetch_timeout_s <= 0 or self.save_queue_blocks < 1 or self.save_batch_blocks < 1:
            raise ValueError("fetch_timeout_s, save_queue_blocks and save_batch_blocks must be positive")


@dataclass(frozen=True)
class SavedBlock:
    key: bytes
    parent: bytes
    depth: int
    payload: bytes | memoryview
    staged: Staged | None = None  # the staging slot ``payload`` views: waited for, then released


@dataclass(frozen=True)
class FetchResult:
    """The leading blocks of the asked keys that the service had, in order: each where it
    lies in the service's shared slab (``Mapped``, same host) or received (a writable view,
    valid as long as the result is held)."""

    keys: list[bytes]
    tiers: list[str]
    blocks: list[Mapped | memoryview]
    timed_out: bool = False


@dataclass
class ConnectorStats:
    fetches: int = 0
    fetched_blocks: int = 0
    fetched_bytes: int = 0
    fetch_timeouts: int = 0
    short_gets: int = 0  # the lookup said cached, the get came back without it
    rejected_blocks: int = 0  # the engine refused a block (wrong size for a page, no free page)
    moved_blocks: int = 0  # the service moved a mapped block while the engine copied it
    saved_blocks: int = 0
    saved_bytes: int = 0
    save_dropped: int = 0  # the save queue (or the engine's staging ring) was full
    save_failed: int = 0  # the service did not take a batch
    hits_by_tier: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {**{k: v for k, v in vars(self).items() if k != "hits_by_tier"},
                "hits_by_tier": dict(self.hits_by_tier)}


class CacheConnector:
    """Engine-thread methods: ``start_fetch``, ``completed``, ``wait``, ``save``, ``reject``.
    Everything that touches the network runs on the connector's own threads."""

    def __init__(self, config: ConnectorConfig, client: CacheClient | ShardedCacheClient | None = None):
        self.config = config
        self.client = client or open_client(config.url, ClientOptions(timeout=config.client_timeout_s,
                                                                      device=config.device))
        self.stats = ConnectorStats()
        self._pool = ThreadPoolExecutor(config.fetch_threads, thread_name_prefix="kvtier-fetch")
        self._pending: dict[str, tuple[Future, float]] = {}  # request id -> (fetch, deadline)
        self._done = threading.Event()  # set when some fetch finishes
        self._saves: queue.Queue[SavedBlock | None] = queue.Queue(config.save_queue_blocks)
        self._unsent = 0  # blocks queued and not yet sent (or failed)
        self._sent = threading.Condition()
        self._saver = threading.Thread(target=self._save_loop, name="kvtier-save", daemon=True)
        self._saver.start()
        self._last_log = 0.0

    # -- fetching (engine thread) --------------------------------------------------------

    def start_fetch(self, request_id: str, keys: list[bytes]) -> None:
        """Ask the service, in the background, for the longest cached prefix of ``keys``."""
        future = self._pool.submit(self._fetch, keys)
        future.add_done_callback(lambda _: self._done.set())
        self._pending[request_id] = (future, time.monotonic() + self.config.fetch_timeout_s)
        self.stats.fetches += 1

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def cancel(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def completed(self) -> list[tuple[str, FetchResult]]:
        """Fetches that finished, and those past their deadline (with nothing fetched)."""
        now = time.monotonic()
        self._done.clear()
        out = []
        for request_id, (future, deadline) in list(self._pending.items()):
            if future.done():
                result = future.result()
            elif now >= deadline:
                result = FetchResult([], [], [], timed_out=True)
                self.stats.fetch_timeouts += 1
                self._note("a cache fetch took longer than %.1f s; prefilling without it",
                           self.config.fetch_timeout_s)
            else:
                continue
            del self._pending[request_id]
            self.stats.fetched_blocks += len(result.blocks)
            self.stats.fetched_bytes += sum(b.nbytes for b in result.blocks)
            self.stats.hits_by_tier.update(result.tiers[: len(result.blocks)])
            out.append((request_id, result))
        return out

    def wait(self, timeout: float) -> None:
        """Block until some fetch finishes (or ``timeout``): for an engine with nothing else to do."""
        if self._pending:
            self._done.wait(timeout)

    def reject(self, key: bytes, reason: str) -> None:
        """The engine could not use a fetched block: count it and say so."""
        self.stats.rejected_blocks += 1
        self._note("rejected a block from the cache service (%s): %s", key.hex(), reason)

    def moved(self, key: bytes) -> None:
        """A mapped block moved while the engine copied it: it is recomputed, not used."""
        self.stats.moved_blocks += 1
        self._note("a cached block (%s) moved while it was copied; recomputing it", key.hex())

    def _fetch(self, keys: list[bytes]) -> FetchResult:
        tiers = self.client.lookup(keys)
        if not tiers:
            return FetchResult(keys, [], [])
        blocks: list[Mapped | memoryview] = []
        # Where each block lies in the shared slab, or a view into the reply's receive
        # buffer (kept alive by it): no copy here; the engine copies each into its page.
        for block in self.client.get_mapped(keys[: len(tiers)]):
            if block is None:  # evicted between lookup and get: the prefix ends here
                self.stats.short_gets += 1
                break
            blocks.append(block)
        return FetchResult(keys, tiers, blocks)

    # -- saving --------------------------------------------------------------------------

    def save(self, blocks: list[SavedBlock]) -> None:
        """Queue blocks for the service; drops (and counts) what the full queue cannot take."""
        for block in blocks:
            try:
                with self._sent:
                    self._saves.put_nowait(block)
                    self._unsent += 1
            except queue.Full:
                if block.staged is not None:
                    block.staged.release()
                self.drop(1)

    def drop(self, num_blocks: int) -> None:
        """Count blocks that were not saved for want of room (queue or staging slots)."""
        self.stats.save_dropped += num_blocks
        self._note("the save queue is full (%d blocks); dropping blocks", self.config.save_queue_blocks)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued block was sent (or failed); False on timeout."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0, timeout)

    def _save_loop(self) -> None:
        while True:
            block = self._saves.get()
            if block is None:
                return
            batch = [block]
            while len(batch) < self.config.save_batch_blocks:
                try:
                    more = self._saves.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._send(batch)
                    return
                batch.append(more)
            self._send(batch)

    def _send(self, batch: list[SavedBlock]) -> None:
        staged = [b.staged for b in batch if b.staged is not None]
        try:
            for s in staged:
                s.wait()
            stored = self.client.put([(b.key, b.parent, b.depth, b.payload) for b in batch])
        finally:
            for s in staged:
                s.release()
        if stored is None:
            self.stats.save_failed += len(batch)
            self._note("the cache service did not take %d blocks", len(batch))
        else:
            self.stats.saved_blocks += len(batch)
            self.stats.saved_bytes += sum(len(b.payload) for b in batch)
        with self._sent:
            self._unsent -= len(batch)
            self._sent.notify_all()

    # -- lifecycle -----------------------------------------------------------------------

    def _note(self, message: str, *args) -> None:
        """A warning, at most one per ``_LOG_EVERY_S``: counters carry the exact numbers."""
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            log.warning("cache connector: " + message + " (stats: %s)", *args, self.stats.as_dict())

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop. A saver stuck on a stalled
        service is a daemon thread: it is left behind rather than waited for."""
        try:
            self._saves.put(None, timeout=timeout)
        except queue.Full:
            log.warning("cache connector: %d blocks unsent at close", self._saves.qsize())
        self._saver.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
