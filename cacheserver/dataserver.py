"""The data plane's socket server: one thread per connection, on TCP and a Unix socket.

The server only frames bytes: it reads a header, asks ``DataPlane.check`` whether the body
may be read, reads the body into the connection's own reusable buffer, and sends back the
reply ``DataPlane.handle`` built. Requests on one connection are answered in order, so a
client may pipeline them. Blocking sockets in threads beat an event loop here: each large
frame is one ``recv_into`` / ``sendmsg`` with the GIL released, and the store is
thread-safe.

Shutdown (``stop``): the listeners close, each connection finishes the request it is in
and then closes, and ``stop`` waits for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

from cacheserver import protocol as p
from cacheserver.dataplane import DataPlane
from cacheserver.framing import PeerClosed, recv_into_exact, send_buffers, tune

log = logging.getLogger(__name__)

_POLL_S = 0.25  # how often idle threads look at the stop flag
_BODY_TIMEOUT_S = 30.0  # a peer that stalls mid-frame longer than this is dropped


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def unix_listener(path: str) -> socket.socket:
    if os.path.exists(path):
        os.unlink(path)  # a stale socket from a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    # Owner only, whatever the umask: a client here may map the DRAM tier read-only.
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class DataServer:
    def __init__(self, plane: DataPlane, listeners: list[socket.socket]):
        self.plane = plane
        self._listeners = listeners
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conn_threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        for listener in self._listeners:
            listener.settimeout(_POLL_S)
            t = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True,
                                 name=f"kvtier-accept-{listener.fileno()}")
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let every connection finish its request in flight, wait."""
        self._stopping.set()
        for t in self._threads:
            t.join(timeout)
        with self._lock:
            conns = list(self._conn_threads)
        for t in conns:
            t.join(timeout)

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True, name="kvtier-conn")
                with self._lock:
                    self._conn_threads.add(t)
                t.start()
        finally:
            if listener.family == socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    os.unlink(listener.getsockname())
            listener.close()

    def _serve(self, conn: socket.socket) -> None:
        counters = self.plane.counters
        counters.connections += 1
        counters.open_connections += 1
        try:
            tune(conn)
            Connection(conn, self.plane, self._stopping).run()
        except (PeerClosed, ConnectionError, TimeoutError) as e:
            counters.errors["CONNECTION_LOST"] += 1
            log.debug("data plane: connection dropped: %s", e)
        finally:
            counters.open_connections -= 1
            conn.close()
            with self._lock:
                self._conn_threads.discard(threading.current_thread())


class Connection:
    """One client connection: owns its socket's read buffer."""

    def __init__(self, sock: socket.socket, plane: DataPlane, stopping: threading.Event):
        self.sock = sock
        self.plane = plane
        self.stopping = stopping
        self._header = bytearray(p.HEADER_SIZE)
        self._body = bytearray(64 << 10)  # grows to the largest body seen, within limits
        self.local = sock.family == socket.AF_UNIX  # shared memory is offered here only

    def run(self) -> None:
        while self._next_header():
            reply = self._answer()
            try:
                send_buffers(self.sock, [p.Header(reply.status, self._request.request_id, reply.count,
                                                  reply.body_len).pack(), *reply.buffers], reply.fds)
                if reply.trailer is not None:
                    send_buffers(self.sock, [reply.trailer()])
            finally:
                for fd in reply.fds:
                    os.close(fd)
                if reply.sent is not None:
                    reply.sent()
            if reply.close:
                return

    def _next_header(self) -> bool:
        """Wait for the next header while watching the stop flag; False at EOF or stop."""
        view = memoryview(self._header)
        done = 0
        self.sock.settimeout(_POLL_S)
        while done < p.HEADER_SIZE:
            try:
                n = self.sock.recv_into(view[done:])
            except TimeoutError:
                if self.stopping.is_set() and done == 0:
                    return False
                continue
            if n == 0:
                if done:
                    raise PeerClosed("connection closed inside a frame header")
                return False
            done += n
        self.sock.settimeout(_BODY_TIMEOUT_S)
        return True

    def _answer(self):
        try:
            self._request = p.unpack_header(self._header)
        except p.FrameError as e:
            self._request = p.Header(0, 0, 0, 0)
            return self.plane.refuse(p.Status.BAD_FRAME, str(e))
        refusal = self.plane.check(self._request)
        if refusal is not None:
            return refusal
        return self.plane.handle(self._request, self._receive_body(self._request.body_len), self.local)

    def _receive_body(self, size: int) -> memoryview:
        """The body, in the connection's buffer. The buffer grows only as bytes arrive (at
        most doubling each time), so a header that merely claims a large body costs no
        memory until the body comes."""
        done = 0
        while done < size:
            if done == len(self._body):
                grown = bytearray(min(size, 2 * len(self._body)))
                grown[:done] = self._body
                self._body = grown
            end = min(size, len(self._body))
            recv_into_exact(self.sock, memoryview(self._body)[done:end])
            done = end
        return memoryview(self._body)[:size]
