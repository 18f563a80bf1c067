"""``CacheClient``: the engine's blocking client for the cache service's data plane.

Thread-safe: each call borrows a pooled connection (or opens one) and returns it after a
clean exchange; a connection that saw any error is closed, never reused, and a later call
opens a fresh one. Every method answers; none raises for the service's failures: a
timeout, a refused connection or an error reply gives the fallback (a miss, 0) and a
counter (``client.counters``), and after repeated failures the breaker answers at once.
Payloads come back as memoryviews (one receive buffer per reply, no copy per block).

On a ``unix://`` URL the client maps the service's DRAM tier read-only when the service
offers it (``clients.shared``), and GETs copy blocks straight out of it; a service that
does not offer it is asked over the socket as usual (``ClientOptions.shared_memory=False``
never asks). With ``ClientOptions.device`` (an engine's GPU) it also opens the service's
HBM tier when it lies on that GPU, and ``get_mapped`` hands out blocks there too.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Sequence
from typing import Any

from cacheserver import protocol as p
from clients import calls
from clients.connection import Connection
from clients.guard import ClientOptions, Guard
from clients.shared import STALE, Mapped, SharedSlab, identity
from clients.url import parse_url
from tiers import cuda_ipc

Entry = tuple[bytes, bytes, int, Any]  # key, parent, depth, payload
log = logging.getLogger(__name__)


class CacheClient:
    def __init__(self, url: str, options: ClientOptions | None = None):
        self.address = parse_url(url)
        self.options = options or ClientOptions()
        self.guard = Guard(self.options)
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slabs: dict[str, SharedSlab | None] = {}  # the service's shared slabs mapped so far, by name
        self._ipc_failed = False  # CUDA refused to open the HBM slab: not tried again

    @property
    def counters(self):
        return self.guard.counters

    # -- the calls ----------------------------------------------------------------------

    def lookup(self, keys: Sequence[bytes]) -> list[str]:
        """The tier of each leading cached key; ``len()`` is the cached prefix in blocks."""
        return self._run(calls.lookup_plan(keys, self.options.max_batch))

    def get(self, keys: Sequence[bytes]) -> list[memoryview | None]:
        def action(conn: Connection):
            if conn.shared is None:
                return conn.exchange(calls.get_plan(keys, self.options.max_batch), self.options.timeout)
            got = conn.exchange(calls.get_mapped_plan(keys, self.options.max_batch, [conn.shared]),
                                self.options.timeout)
            stale = [i for i, g in enumerate(got) if g is STALE]
            if stale:  # moved while copied (evicted, demoted): ask again over the socket
                again = conn.exchange(calls.get_plan([keys[i] for i in stale], self.options.max_batch),
                                      self.options.timeout)
                for i, g in zip(stale, again, strict=True):
                    got[i] = g
            return got

        return self._call([None] * len(keys), action)

    def get_mapped(self, keys: Sequence[bytes]) -> list[Mapped | memoryview | None]:
        """Like ``get``, but a block in a shared slab this client mapped comes back as
        ``Mapped`` (where it lies, not copied), for a caller that copies it itself, for
        instance by DMA into GPU pages, and then asks ``Mapped.slab.check`` whether its copy
        is whole. Without a shared slab (TCP, or none offered) this is ``get``."""
        def action(conn: Connection):
            slabs = [s for s in (conn.shared, conn.device_slab) if s is not None]
            if not slabs:
                return conn.exchange(calls.get_plan(keys, self.options.max_batch), self.options.timeout)
            return conn.exchange(calls.get_mapped_plan(keys, self.options.max_batch, slabs, copy=False),
                                 self.options.timeout)

        return self._call([None] * len(keys), action)

    def get_into(self, keys: Sequence[bytes], outs: Sequence[memoryview]) -> list[int | None]:
        """Receive each payload straight into ``outs[i]`` (a writable buffer at least as
        large as the block: a KV page, a pinned staging buffer); returns each size, ``None``
        for a miss. No allocation and no copy beyond the kernel's (or, through shared
        memory, one copy out of the service's DRAM tier). At most ``max_batch`` keys per call."""
        if len(keys) != len(outs) or len(keys) > self.options.max_batch:
            raise ValueError(f"get_into takes one buffer per key and at most {self.options.max_batch} keys")

        def by_socket(conn: Connection, rows: Sequence[int]) -> list[int | None]:
            request = calls.Request(p.Op.GET, len(rows), [p.keys_body([keys[i] for i in rows])])
            return conn.get_into(request, [outs[i] for i in rows], self.options.timeout)

        def action(conn: Connection):
            if conn.shared is None:
                return by_socket(conn, range(len(keys)))
            plan = calls.get_mapped_plan(keys, self.options.max_batch, [conn.shared], outs)
            got = conn.exchange(plan, self.options.timeout)
            sizes = [None if g is None or g is STALE else g.nbytes for g in got]
            stale = [i for i, g in enumerate(got) if g is STALE]
            if stale:  # moved while copied (evicted, demoted): ask again over the socket
                for i, n in zip(stale, by_socket(conn, stale), strict=True):
                    sizes[i] = n
            return sizes

        return self._call([None] * len(keys), action)

    def put(self, entries: Sequence[Entry]) -> int | None:
        """Store ``(key, parent, depth, payload)`` blocks; returns how many were new, or
        ``None`` when the call failed (then some of its batches may have been stored)."""
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
        self._drop_idle()

    def _drop_idle(self) -> None:
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
                if isinstance(e, ConnectionError):
                    # Closed or reset: the service likely restarted, so every idle connection
                    # is as stale as this one. Dropping them lets the retry (or the breaker's
                    # trial call) reach the new process at once.
                    self._drop_idle()
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
            conn = Connection(self.address, self.options.connect_timeout, self.options.max_reply_bytes)
        if self.address.scheme == "unix" and self.options.shared_memory:
            self._map_shared(conn)
        return conn

    def _map_shared(self, conn: Connection) -> None:
        """Map the service's slabs for a new connection; one mapping per service serves
        every connection. What a service does not share is asked for over the socket."""
        conn.shared = self._map(conn, p.Op.MAP)
        if self.options.device is not None and not self._ipc_failed:
            conn.device_slab = self._map(conn, p.Op.MAP_DEVICE)

    def _map(self, conn: Connection, op: p.Op) -> SharedSlab | None:
        try:
            fds, body = conn.map_shared(self.options.connect_timeout, op)
        except calls.ServerError:
            return None
        except BaseException:
            conn.close()
            raise
        try:
            name = "hbm" if op == p.Op.MAP_DEVICE else "dram"
            slab = self._slabs.get(name)
            if slab is None or slab.identity != identity(fds):
                slab = self._slabs[name] = self._open(name, fds, body)
            return slab
        except BaseException:
            conn.close()
            raise
        finally:
            for fd in fds:
                os.close(fd)

    def _open(self, name: str, fds: list[int], body: memoryview) -> SharedSlab | None:
        """The slab a MAP or MAP_DEVICE reply describes, mapped; ``None`` for an HBM slab on
        another GPU, or one CUDA would not open (its blocks then come over the socket)."""
        if name == "dram":
            return SharedSlab(fds, p.parse_map(body), self.counters)
        import torch

        layout, handle, uuid = p.parse_device_map(body)
        device = torch.device(self.options.device)
        if not cuda_ipc.available() or cuda_ipc.device_uuid(device) != uuid:
            return None
        try:
            return SharedSlab(fds, layout, self.counters, name=name, handle=handle, device=device)
        except Exception as e:  # say, no peer access: as if the slab were on another GPU
            self._ipc_failed = True
            log.warning("kvtier client: cannot open the cache service's HBM slab by CUDA IPC (%s); "
                        "its blocks come over the socket", e)
            return None

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
