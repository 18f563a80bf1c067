"""A peer that answers with a header claiming an absurd body: the clients refuse it with
their fallback (a miss), allocate nothing for it, and count the failure."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from cacheserver import protocol as p
from clients.async_client import AsyncCacheClient
from clients.cache_client import CacheClient
from clients.guard import ClientOptions


@pytest.fixture
def liar():
    """Reads one request header and replies OK with ``body_len`` = 2**60."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                request = p.unpack_header(conn.recv(p.HEADER_SIZE, socket.MSG_WAITALL))
                reply = p.Header(p.Status.OK, request.request_id, 1, 1 << 60).pack()
                conn.sendall(reply + struct.pack("<q", 5))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"kvtier://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    listener.close()


def test_sync_client_refuses_a_reply_claiming_too_much(liar):
    client = CacheClient(liar, ClientOptions(timeout=2, retries=0))
    assert client.lookup([b"k" * 16]) == []
    assert client.counters.failures == 1


def test_async_client_refuses_a_reply_claiming_too_much(liar):
    async def go():
        client = AsyncCacheClient(liar, ClientOptions(timeout=2, retries=0))
        try:
            return await client.lookup([b"k" * 16]), client.counters.failures
        finally:
            await client.close()

    assert asyncio.run(go()) == ([], 1)
