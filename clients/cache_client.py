"""``CacheClient``: the engine's blocking client for the cache service's data plane.

Thread-safe: each call borrows a pooled connection (or opens one) and returns it after a
clean exchange; a connection that saw any error is closed, never reused, and a later call
opens a fresh one. Every method answers; none raises for the service's failures: a
timeout, a refused connection or an error reply gives the fallback (a miss, 0) and a
counter (``client.counters``), and after repeated failures the breaker answers at once.
Payloads come back as memoryviews (one receive buffer per reply, no copy per block).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from typing import Any

from cacheserver import protocol as p
from clients import calls
from clients.connection import Connection
from clients.guard import ClientOptions, Guard
from clients.url import parse_url

Entry = tuple[bytes, bytes, int, Any]  # key, parent, depth, payload


class CacheClient:
    def __init__(self, url: str, options: ClientOptions | None = None):
        self.address = parse_url(url)
        self.options = options or ClientOptions()
        self.guard = Guard(self.options)
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()

    @property
    def counters(self):
        return self.guard.counters

    # -- the calls ----------------------------------------------------------------------

    def lookup(self, keys: Sequence[bytes]) -> list[str]:
        """The tier of each leading cached key; ``len()`` is the cached prefix in blocks."""
        return self._run(calls.lookup_plan(keys, self.options.max_batch))

    def get(self, keys: Sequence[bytes]) -> list[memoryview | None]:
        return self._run(calls.get_plan(keys, self.options.max_batch))

    def get_into(self, keys: Sequence[bytes], outs: Sequence[memoryview]) -> list[int | None]:
        """Receive each payload straight into ``outs[i]`` (a writable buffer at least as
        large as the block: a KV page, a pinned staging buffer); returns each size, ``None``
        for a miss. No allocation and no copy beyond the kernel's. At most ``max_batch``
        keys per call."""
        if len(keys) != len(outs) or len(keys) > self.options.max_batch:
            raise ValueError(f"get_into takes one buffer per key and at most {self.options.max_batch} keys")
        request = calls.Request(p.Op.GET, len(keys), [p.keys_body(list(keys))])
        return self._call([None] * len(keys), lambda conn: conn.get_into(request, outs, self.options.timeout))

    def put(self, entries: Sequence[Entry]) -> int:
        """Store ``(key, parent, depth, payload)`` blocks; returns how many were new."""
        o = self.options
        return self._run(calls.put_plan(entries, o.max_batch, o.max_frame_bytes - 1024))

    def delete(self, keys: Sequence[bytes]) -> int:
        return self._run(calls.keys_plan(p.Op.DELETE, keys, self.options.max_batch))

    def pin(self, keys: Sequence[bytes], tier: str | None = None, ttl: float | None = None) -> int:
        return self._run(calls.pin_plan(keys, tier, ttl, self.options.max_batch))

    def unpin(self, keys: Sequence[bytes]) -> int:
        return self._run(calls.keys_plan(p.Op.UNPIN, keys, self.options.max_batch))

    def ping(self) -> bool:
        return self._run(calls.ping_plan())

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the machinery ------------------------------------------------------------------

    def _run(self, plan: calls.Plan):
        return self._call(plan.fallback, lambda conn: conn.exchange(plan, self.options.timeout))

    def _call(self, fallback, action):
        if not self.guard.admit():
            return fallback
        attempt = 0
        while True:
            conn = None
            try:
                conn = self._borrow()
                result = action(conn)
            except (OSError, p.FrameError, calls.ServerError) as e:
                if conn is not None:
                    self._account(conn)
                    conn.close()
                wait = self.guard.failed(e, attempt)
                if wait is None:
                    return fallback
                time.sleep(wait)
                attempt += 1
                continue
            self._account(conn)
            self._give_back(conn)
            self.guard.succeeded()
            return result

    def _borrow(self) -> Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            self.guard.counters.connects += 1
            return Connection(self.address, self.options.connect_timeout, self.options.max_reply_bytes)

    def _give_back(self, conn: Connection) -> None:
        if self._idle.qsize() < self.options.pool_size:
            self._idle.put(conn)
        else:
            conn.close()

    def _account(self, conn: Connection) -> None:
        c = self.guard.counters
        c.bytes_sent += conn.bytes_sent
        c.bytes_received += conn.bytes_received
        conn.bytes_sent = conn.bytes_received = 0
