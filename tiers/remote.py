"""The remote tier: blocks shared by every cache service through a Redis Cluster, or one
Redis or Valkey server, below flash.

- Reads are one batched round: a pipeline of two GETs per block (its head and tail, one
  slot, see ``tiers.remote_value``), which redis-py's cluster client splits by node; no
  MGET (redis-py refuses it in cluster pipelines, and across slots Redis would too).
  Every value is verified (key, header, checksum) before it is used: a corrupt, torn or
  foreign value is a miss, counted, and deleted.
- Writes are never on the data path: ``write_behind`` queues encoded blocks (bounded in
  bytes; a block that does not fit is dropped and counted) and one writer thread sends
  them in pipelines.
- Faults (server down, slow, failing over, ``CLUSTERDOWN``, a node's replies lost) are
  misses and counters, never exceptions to the caller. After ``breaker_failures`` rounds
  in a row fail, the tier stops asking for ``breaker_cooldown_s`` (reads are misses,
  writes are dropped, both counted), then tries again. Log lines are rate-limited.
- Eviction and capacity belong to the remote store (``maxmemory`` with ``allkeys-lru``,
  or ``ttl_s``): the tier keeps no index of what is there.

Thread-safe: redis-py's clients pool their connections; counters are integers updated
under the GIL. No method is called under the store's lock (the store calls it before or
after taking it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate
from urllib.parse import urlsplit

from tiers import record, remote_value
from tiers.base import Block

log = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0  # at most one log line per kind of fault this often
_WRITE_BATCH_BYTES = 16 << 20  # most bytes the writer sends in one pipeline


@dataclass(frozen=True)
class RemoteSettings:
    urls: tuple[str, ...]  # redis:// or rediss:// (TLS), with user and password if any
    timeout_s: float = 0.5  # connect and socket timeout of one round
    ttl_s: int = 0  # expiry of written blocks (0: none; the server's maxmemory policy evicts)
    queue_bytes: int = 256 << 20  # write-behind queue bound
    breaker_failures: int = 3  # failed rounds in a row that open the breaker
    breaker_cooldown_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("the remote tier needs at least one URL (redis://host:port)")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError(f"remote URL {url!r} must look like redis://[user:password@]host:port "
                                 "or rediss://... (TLS)")
        if self.timeout_s <= 0 or self.queue_bytes < 0 or self.ttl_s < 0:
            raise ValueError("remote timeout must be > 0, its queue and TTL >= 0")


@dataclass
class RemoteCounters:
    rounds: int = 0  # batched read rounds sent
    hits: int = 0
    misses: int = 0  # absent, or lost to a fault (see errors) or the breaker (skipped)
    corrupt: int = 0  # refused values (checksum, header, torn, foreign key), deleted
    errors: int = 0  # blocks whose read failed (server down, slow, failing over)
    skipped: int = 0  # blocks not asked because the breaker was open
    bytes_in: int = 0  # verified payload bytes read
    writes: int = 0  # blocks written
    write_bytes: int = 0  # value bytes written
    write_errors: int = 0  # blocks whose write failed
    dropped_writes: int = 0  # blocks not queued (queue full) or dropped (breaker open)
    breaker_opens: int = 0
    faults: dict = field(default_factory=dict)  # exception class name -> times seen


class RemoteTier:
    name = "remote"

    def __init__(self, settings: RemoteSettings):
        self.settings = settings
        self.counters = RemoteCounters()
        self.mode = ""  # "cluster" or "single" once connected
        self._client = None
        self._connect_lock = threading.Lock()
        self._failures = 0  # rounds failed in a row
        self._open_until = 0.0  # monotonic time the breaker closes again
        self._logged: dict[str, float] = {}
        self._queue: deque[tuple[bytes, bytes, bytes | None]] = deque()  # (key, head, tail)
        self._queued_bytes = 0
        self._busy = False  # the writer holds a batch it has not finished sending
        self._wake = threading.Condition()
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="kvtier-remote-writer", daemon=True)
        self._writer.start()

    # -- reads --------------------------------------------------------------------------

    def fetch(self, keys: list[bytes], chain: bool) -> list[Block]:
        """The verified blocks of ``keys``, one batched round. With ``chain`` the keys are
        consecutive blocks of one prefix and the answer stops at the first one missing (a
        block is useless without its ancestors); otherwise every block found comes back."""
        if not keys:
            return []
        if not self._closed_breaker():
            self.counters.skipped += len(keys)
            self.counters.misses += len(keys)
            return []
        self.counters.rounds += 1
        replies = self._round(keys)
        found, bad = [], []
        for key, reply in zip(keys, replies, strict=True):
            block = self._verify(key, reply, bad)
            if block is None:
                self.counters.misses += 1
                if chain:
                    self.counters.misses += len(keys) - len(found) - 1
                    break
                continue
            self.counters.hits += 1
            self.counters.bytes_in += block.size
            found.append(block)
        if bad:
            self._delete(bad)
        return found

    def _round(self, keys: list[bytes]) -> list:
        """One reply per key: ``(head, tail)``, or the exception its node answered."""
        try:
            client = self._connected()
            pipe = client.pipeline(transaction=False)
            for key in keys:
                head, tail = remote_value.redis_keys(key)
                pipe.get(head)
                pipe.get(tail)
            flat = pipe.execute(raise_on_error=False)
        except Exception as e:  # every redis-py and socket error is a fault here: a miss
            self._fault(e, len(keys))
            return [e] * len(keys)
        replies = []
        for head, tail in zip(flat[::2], flat[1::2], strict=True):
            failed = head if isinstance(head, Exception) else tail if isinstance(tail, Exception) else None
            replies.append(failed or (head, tail))
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:  # some nodes answered: the breaker trips only on rounds that all fail
            self._fault(failed[0], len(failed), trip=len(failed) == len(replies))
        else:
            self._failures = 0
        return replies

    def _verify(self, key: bytes, reply, bad: list[bytes]) -> Block | None:
        if isinstance(reply, Exception):
            return None
        try:
            return remote_value.decode(key, *reply)
        except record.CorruptRecord as e:
            self.counters.corrupt += 1
            bad.append(key)
            self._log("corrupt", "remote: block %s refused (%s); deleted", key.hex(), e)
            return None

    def _delete(self, keys: list[bytes]) -> None:
        try:
            pipe = self._connected().pipeline(transaction=False)
            for key in keys:
                for name in remote_value.redis_keys(key):  # one key each: cluster pipelines refuse more
                    pipe.delete(name)
            pipe.execute(raise_on_error=False)
        except Exception as e:  # the refused values stay; the next reader refuses them again
            self._fault(e, 0)

    # -- writes -------------------------------------------------------------------------

    def write_behind(self, blocks: list[Block]) -> int:
        """Queue blocks for the remote store (encoding copies each payload, so the caller
        may reuse its buffers on return); returns how many were queued. Never blocks: a
        block the queue has no room for is dropped and counted."""
        queued = 0
        for block in blocks:
            size = block.size + remote_value.OVERHEAD
            with self._wake:
                if self._closing or self._queued_bytes + size > self.settings.queue_bytes:
                    self.counters.dropped_writes += 1
                    continue
                self._queued_bytes += size  # reserved before encoding, outside the lock
            head, tail = remote_value.encode(block)
            with self._wake:
                self._queue.append((block.key, head, tail))
                self._wake.notify()
            queued += 1
        return queued

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued block was sent (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._wake:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    def _write_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                batch, size = [], 0
                while self._queue and size < _WRITE_BATCH_BYTES:
                    item = self._queue.popleft()
                    batch.append(item)
                    size += len(item[1]) + len(item[2] or b"")
                self._busy = True
            try:
                self._send(batch)
            finally:
                with self._wake:
                    self._queued_bytes -= size
                    self._busy = False
                    self._wake.notify_all()

    def _send(self, batch: list[tuple[bytes, bytes, bytes | None]]) -> None:
        if not self._closed_breaker():
            self.counters.dropped_writes += len(batch)
            return
        ex = self.settings.ttl_s or None
        try:
            pipe = self._connected().pipeline(transaction=False)
            for key, head, tail in batch:
                head_key, tail_key = remote_value.redis_keys(key)
                if tail is not None:  # the tail first: a reader never sees a head without it
                    pipe.set(tail_key, tail, ex=ex)
                pipe.set(head_key, head, ex=ex)
            replies = pipe.execute(raise_on_error=False)
        except Exception as e:  # a fault: these blocks are not written; the cache lives on
            self._fault(e, 0)
            self.counters.write_errors += len(batch)
            return
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            self._fault(failed[0], 0, trip=len(failed) == len(replies))
        else:
            self._failures = 0
        # A block counts as written when its head is (the last reply of its commands).
        ends = accumulate([2 if tail is not None else 1 for _, _, tail in batch])
        for (_, head, tail), end in zip(batch, ends, strict=True):
            if isinstance(replies[end - 1], Exception):
                self.counters.write_errors += 1
            else:
                self.counters.writes += 1
                self.counters.write_bytes += len(head) + len(tail or b"")

    # -- connection, faults, breaker ------------------------------------------------------

    def _connected(self):
        """The redis-py client: a cluster client when the server is in cluster mode (or
        several URLs are given), else a plain one. Connects on first use, so a service
        starts while its remote store is down."""
        if self._client is not None:
            return self._client
        with self._connect_lock:
            if self._client is None:
                self._client, self.mode = _connect(self.settings)
                log.info("remote: connected to %s (%s)", redact(self.settings.urls), self.mode)
        return self._client

    def _closed_breaker(self) -> bool:
        """Whether the breaker lets a round through (after its cooldown, one try)."""
        return time.monotonic() >= self._open_until

    def _fault(self, e: BaseException, blocks: int, trip: bool = True) -> None:
        name = type(e).__name__
        self.counters.faults[name] = self.counters.faults.get(name, 0) + 1
        self.counters.errors += blocks
        self._failures += trip
        if self._failures >= self.settings.breaker_failures:
            self._failures = 0
            self._open_until = time.monotonic() + self.settings.breaker_cooldown_s
            self.counters.breaker_opens += 1
            self._log("breaker", "remote: %d rounds failed in a row (last: %s: %s); not asking for %.1f s",
                      self.settings.breaker_failures, name, e, self.settings.breaker_cooldown_s)
        else:
            self._log("fault", "remote: %s: %s (blocks are misses meanwhile)", name, e)

    def _log(self, kind: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._logged.get(kind, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._logged[kind] = now
            log.warning(message, *args)

    # -- lifecycle ----------------------------------------------------------------------

    def close(self, drain_s: float = 5.0) -> None:
        """Send what is queued (up to ``drain_s``), stop the writer, close connections."""
        self.drain(drain_s)
        with self._wake:
            self._closing = True
            self._queue.clear()
            self._wake.notify_all()
        self._writer.join(drain_s + self.settings.timeout_s * 4)
        if self._client is not None:
            self._client.close()

    def stats(self) -> dict:
        return {"urls": list(redact(self.settings.urls)), "mode": self.mode,
                "breaker_open": not self._closed_breaker(), "queued_blocks": len(self._queue),
                "queued_bytes": self._queued_bytes, **vars(self.counters),
                "faults": dict(self.counters.faults)}


def _connect(settings: RemoteSettings):
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry

    timeouts = {"socket_timeout": settings.timeout_s, "socket_connect_timeout": settings.timeout_s}
    first = settings.urls[0]
    cluster = len(settings.urls) > 1
    if not cluster:
        probe = redis.Redis.from_url(first, retry=Retry(NoBackoff(), 0), **timeouts)
        try:
            cluster = bool(probe.info("cluster").get("cluster_enabled"))
        finally:
            probe.close()
    if not cluster:
        return redis.Redis.from_url(first, retry=Retry(NoBackoff(), 0), **timeouts), "single"
    nodes = [ClusterNode(u.hostname, u.port or 6379) for u in map(urlsplit, settings.urls[1:])]
    # One retry: a round during a failover fails fast (a miss) instead of waiting it out.
    client = RedisCluster.from_url(first, startup_nodes=nodes, retry=Retry(NoBackoff(), 1),
                                   require_full_coverage=False, **timeouts)
    return client, "cluster"


def redact(urls: tuple[str, ...]) -> tuple[str, ...]:
    """The URLs without passwords (for logs and stats)."""
    out = []
    for url in urls:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}:***@" if parts.password else ""
        out.append(f"{parts.scheme}://{user}{host}{port}")
    return tuple(out)
