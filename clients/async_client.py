"""``AsyncCacheClient``: the asyncio twin of ``CacheClient`` (same calls, same fallbacks,
same counters and breaker), for engines whose scheduler runs on an event loop.

Connections are asyncio streams kept in a small pool; each call borrows one, writes its
pipelined requests with ``writelines`` (no join of payloads) and reads the replies in
order, under one timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from cacheserver import protocol as p
from clients import calls
from clients.cache_client import Entry
from clients.guard import ClientOptions, Guard
from clients.url import Address, parse_url

_STREAM_LIMIT = 1 << 20


class _AsyncConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self._next_id = 1

    @classmethod
    async def open(cls, address: Address) -> _AsyncConnection:
        if address.scheme == "unix":
            reader, writer = await asyncio.open_unix_connection(address.path, limit=_STREAM_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port, limit=_STREAM_LIMIT)
        return cls(reader, writer)

    async def exchange(self, plan: calls.Plan, counters, max_reply_bytes: int = 1 << 30) -> object:
        first = self._next_id
        self._next_id = (first + len(plan.requests)) & 0xFFFFFFFF
        for i, req in enumerate(plan.requests):
            frame = req.frame((first + i) & 0xFFFFFFFF)
            self.writer.writelines(frame)
            counters.bytes_sent += p.body_size(frame)
        await self.writer.drain()
        parts = []
        for i in range(len(plan.requests)):
            header = p.unpack_header(await self.reader.readexactly(p.HEADER_SIZE))
            if header.body_len > max_reply_bytes:
                raise p.FrameError(f"a reply claims {header.body_len} B, over the client's limit")
            body = memoryview(await self.reader.readexactly(header.body_len))
            counters.bytes_received += p.HEADER_SIZE + header.body_len
            calls.check_order(header, (first + i) & 0xFFFFFFFF)
            calls.check_reply(header, body)
            parts.append(plan.parse(header.count, body))
        return plan.merge(parts)

    def close(self) -> None:
        self.writer.close()


class AsyncCacheClient:
    def __init__(self, url: str, options: ClientOptions | None = None):
        self.address = parse_url(url)
        self.options = options or ClientOptions()
        self.guard = Guard(self.options)
        self._idle: list[_AsyncConnection] = []

    @property
    def counters(self):
        return self.guard.counters

    async def lookup(self, keys: Sequence[bytes]) -> list[str]:
        return await self._run(calls.lookup_plan(keys, self.options.max_batch))

    async def get(self, keys: Sequence[bytes]) -> list[memoryview | None]:
        return await self._run(calls.get_plan(keys, self.options.max_batch))

    async def put(self, entries: Sequence[Entry]) -> int | None:
        """How many blocks were new; ``None`` when the call failed (as ``CacheClient.put``)."""
        o = self.options
        return await self._run(calls.put_plan(entries, o.max_batch, o.max_frame_bytes - 1024))

    async def delete(self, keys: Sequence[bytes]) -> int:
        return await self._run(calls.keys_plan(p.Op.DELETE, keys, self.options.max_batch))

    async def pin(self, keys: Sequence[bytes], tier: str | None = None, ttl: float | None = None) -> int:
        return await self._run(calls.pin_plan(keys, tier, ttl, self.options.max_batch))

    async def unpin(self, keys: Sequence[bytes]) -> int:
        return await self._run(calls.keys_plan(p.Op.UNPIN, keys, self.options.max_batch))

    async def ping(self) -> bool:
        return await self._run(calls.ping_plan())

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _run(self, plan: calls.Plan):
        if not self.guard.admit():
            return plan.fallback
        attempt = 0
        while True:
            conn = None
            try:
                conn = self._idle.pop() if self._idle else await asyncio.wait_for(
                    self._connect(), self.options.connect_timeout)
                exchange = conn.exchange(plan, self.guard.counters, self.options.max_reply_bytes)
                result = await asyncio.wait_for(exchange, self.options.timeout)
            except (OSError, asyncio.IncompleteReadError, p.FrameError, calls.ServerError) as e:
                if conn is not None:
                    conn.close()
                error = ConnectionError(str(e)) if isinstance(e, asyncio.IncompleteReadError) else e
                if isinstance(error, ConnectionError):
                    await self.close()  # the service likely restarted: every idle one is stale too
                wait = self.guard.failed(error, attempt)
                if wait is None:
                    return plan.fallback
                await asyncio.sleep(wait)
                attempt += 1
                continue
            if len(self._idle) < self.options.pool_size:
                self._idle.append(conn)
            else:
                conn.close()
            self.guard.succeeded()
            return result

    async def _connect(self) -> _AsyncConnection:
        self.guard.counters.connects += 1
        return await _AsyncConnection.open(self.address)
