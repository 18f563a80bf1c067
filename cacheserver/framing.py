"""Moving frames over a blocking socket without extra copies.

``recv_into_exact`` fills a caller-owned buffer (``recv_into``, no intermediate bytes);
``send_buffers`` hands a list of buffers to the kernel with ``sendmsg`` (scatter-gather,
no join), resuming after partial sends. Shared by the server and the sync client.
"""

from __future__ import annotations

import array
import socket

_IOV_MAX = 512  # buffers per sendmsg call, well under Linux's IOV_MAX of 1024


class PeerClosed(ConnectionError):
    """The other side closed the connection."""


def recv_into_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; ``PeerClosed`` if the peer closes first."""
    done, total = 0, len(view)
    while done < total:
        n = sock.recv_into(view[done:])
        if n == 0:
            raise PeerClosed(f"connection closed after {done} of {total} B")
        done += n


def send_buffers(sock: socket.socket, buffers: list, fds: tuple[int, ...] = ()) -> int:
    """Send every buffer in order; returns the bytes sent. ``fds`` (Unix sockets) travel
    with the first bytes, so the peer receives them with the start of the frame."""
    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if v.nbytes]
    total = 0
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    while views:
        sent = sock.sendmsg(views[:_IOV_MAX], ancillary)
        ancillary = []
        total += sent
        # Drop what went out; a partly sent buffer continues from where it stopped.
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]
    return total


def tune(sock: socket.socket, buffer_bytes: int = 4 << 20) -> None:
    """Large kernel buffers (fewer wake-ups per big frame) and no Nagle delay on TCP."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
