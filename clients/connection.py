"""One blocking connection to the data plane, with a deadline per exchange.

``exchange`` writes every request of a plan back to back (pipelined: one round trip for
many batches), then reads the replies in order. Reply bodies are received straight into a
fresh uninitialised buffer (``recv_into``), and payloads are handed out as views of it.
"""

from __future__ import annotations

import os
import socket
import time

import numpy as np

from cacheserver import protocol as p
from cacheserver.framing import PeerClosed, send_buffers, tune
from clients.calls import Plan, Request, check_order, check_reply
from clients.shared import SharedSlab
from clients.url import Address


def open_socket(address: Address, timeout: float) -> socket.socket:
    if address.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.path)
    else:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    tune(sock)
    return sock


class Connection:
    def __init__(self, address: Address, timeout: float, max_reply_bytes: int = 1 << 30):
        self.sock = open_socket(address, timeout)
        self.max_reply_bytes = max_reply_bytes
        self._next_id = 1
        self._header = bytearray(p.HEADER_SIZE)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.shared: SharedSlab | None = None  # the service's DRAM slab, when this connection mapped it
        self.device_slab: SharedSlab | None = None  # its HBM slab, opened on this process's GPU

    def close(self) -> None:
        self.sock.close()

    def get_into(self, request: Request, outs, timeout: float) -> list[int | None]:
        """One GET whose payloads land in the caller's buffers; sizes, ``None`` for misses."""
        deadline = time.monotonic() + timeout
        request_id = self._take_ids(1)
        self.sock.settimeout(timeout)
        self.bytes_sent += send_buffers(self.sock, request.frame(request_id))
        self._recv(memoryview(self._header), deadline)
        header = p.unpack_header(self._header)
        if header.code != p.Status.OK or header.request_id != request_id:
            body = bytearray(min(header.body_len, 1 << 16))
            self._recv(memoryview(body), deadline)
            check_reply(header, body)
            raise p.FrameError(f"reply {header.request_id} out of order (expected {request_id})")
        sizes = np.empty(request.count, dtype="<i8")
        self._recv(memoryview(sizes).cast("B"), deadline)
        out: list[int | None] = []
        for buf, size in zip(outs, sizes.tolist(), strict=True):
            if size == p.MISSING:
                out.append(None)
                continue
            view = memoryview(buf).cast("B")
            if size > view.nbytes:  # the rest of the reply cannot be read: drop the connection
                raise p.FrameError(f"a {size} B block does not fit its {view.nbytes} B buffer")
            self._recv(view[:size], deadline)
            out.append(size)
        whole = bytearray(request.count)  # which payloads the server vouches for
        self._recv(memoryview(whole), deadline)
        if 8 * request.count + sum(n or 0 for n in out) + request.count != header.body_len:
            raise p.FrameError(f"get reply of {header.body_len} B does not add up to its payloads")
        self.bytes_received += p.HEADER_SIZE + header.body_len
        return [n if ok == 1 else None for n, ok in zip(out, whole, strict=True)]

    def map_shared(self, timeout: float, op: p.Op = p.Op.MAP) -> tuple[list[int], memoryview]:
        """Ask for one of the service's shared slabs (Unix socket; ``MAP`` or
        ``MAP_DEVICE``): the received descriptors (the caller closes them) and the reply's
        body, for ``p.parse_map`` or ``p.parse_device_map``. ``ServerError`` when it
        shares none."""
        deadline = time.monotonic() + timeout
        request_id = self._take_ids(1)
        self.sock.settimeout(timeout)
        self.bytes_sent += send_buffers(self.sock, Request(op, 0, []).frame(request_id))
        # The descriptors travel with the first bytes of the reply.
        first, fds, _, _ = socket.recv_fds(self.sock, p.HEADER_SIZE, 4)
        try:
            if not first:
                raise PeerClosed("cache service closed the connection")
            header, body = self._read_reply(deadline, first)
            check_order(header, request_id)
            check_reply(header, body)
            return fds, body
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def exchange(self, plan: Plan, timeout: float):
        """The merged result of the plan's replies; raises ``TimeoutError``, ``OSError``
        (connection trouble), ``FrameError`` or ``ServerError``."""
        deadline = time.monotonic() + timeout
        first = self._take_ids(len(plan.requests))
        ids = [(first + i) & 0xFFFFFFFF for i in range(len(plan.requests))]
        buffers = []
        for request_id, req in zip(ids, plan.requests, strict=True):
            buffers += req.frame(request_id)
        self.sock.settimeout(timeout)
        self.bytes_sent += send_buffers(self.sock, buffers)
        parts = []
        for request_id in ids:
            header, body = self._read_reply(deadline)
            check_order(header, request_id)
            check_reply(header, body)
            parts.append(plan.parse(header.count, body))
        return plan.merge(parts)

    def _take_ids(self, n: int) -> int:
        """The first of ``n`` request ids for the next frames (they wrap at 2**32)."""
        first = self._next_id
        self._next_id = (first + n) & 0xFFFFFFFF
        return first

    def _read_reply(self, deadline: float, received: bytes = b"") -> tuple[p.Header, memoryview]:
        """The next reply; ``received``: the first bytes of its header, already read."""
        self._header[: len(received)] = received
        self._recv(memoryview(self._header)[len(received) :], deadline)
        header = p.unpack_header(self._header)
        if header.body_len > self.max_reply_bytes:
            raise p.FrameError(f"a reply claims {header.body_len} B, over the client's limit of "
                               f"{self.max_reply_bytes} B")
        body = memoryview(np.empty(header.body_len, dtype=np.uint8)).cast("B")
        self._recv(body, deadline)
        self.bytes_received += p.HEADER_SIZE + header.body_len
        return header, body

    def _recv(self, view: memoryview, deadline: float) -> None:
        done = 0
        while done < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("cache service did not answer in time")
            self.sock.settimeout(remaining)
            n = self.sock.recv_into(view[done:])
            if n == 0:
                raise PeerClosed("cache service closed the connection")
            done += n
