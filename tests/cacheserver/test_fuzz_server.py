"""Hostile input to a real ``kvtier serve`` data plane: random, mutated and truncated
frames over raw sockets (hypothesis, seeded), and headers that claim huge bodies. The
server answers or closes each bad connection, never hangs on it, never allocates what a
frame merely claims, and keeps serving a well-behaved client throughout."""

from __future__ import annotations

import contextlib
import socket
import time

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cacheserver import protocol as p
from clients.cache_client import CacheClient
from tests.cacheserver.blocks import chain
from tests.cacheserver.test_fuzz_protocol import mutated

GOOD = chain("server-fuzz", 3, size=2048)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def send_and_drain(port: int, raw: bytes) -> bytes:
    """Send ``raw``, close our side, and read until the server closes (2 s at most, else
    ``TimeoutError``). The server may close first (a bad header is refused at once):
    that ends the exchange, and our unread or unsent bytes turn its close into a reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        try:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise
        except OSError:  # the server closed first: broken pipe, reset, not connected
            return b""
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


@st.composite
def frames(draw) -> bytes:
    """Bytes a hostile or broken client might send: noise, a mutated request, a request
    cut short, or a header whose declared length does not match what follows."""
    kind = draw(st.sampled_from(["noise", "mutated", "truncated", "lying"]))
    if kind == "noise":
        return draw(st.binary(max_size=256))
    op, count, body = draw(mutated())
    header = p.Header(op % 256, draw(st.integers(0, 2**32 - 1)), count % 2**32, len(body))
    raw = header.pack() + body
    if kind == "truncated":
        return raw[: draw(st.integers(0, len(raw)))]
    if kind == "lying":
        claimed = draw(st.one_of(st.integers(0, 4096), st.integers(0, 2**64 - 1)))
        return p.Header(op % 256, 1, count % 2**32, claimed).pack() + body
    return raw


@seed(8)
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=frames())
def test_hostile_frames_never_hang_or_crash_the_server(module_server, raw):
    client = CacheClient(module_server.data_url)
    client.put(GOOD)
    started = time.monotonic()
    reply = send_and_drain(module_server.data_port, raw)
    assert time.monotonic() - started < 2
    if len(reply) >= p.HEADER_SIZE:
        assert p.unpack_header(reply).code != p.Status.SERVER_ERROR
    assert [bytes(g) for g in client.get([b[0] for b in GOOD])] == [b[3] for b in GOOD]
    assert client.counters.failures == 0
    client.close()


def test_headers_claiming_huge_bodies_allocate_nothing(served):
    """Twenty connections each claim a 200 MiB body (under the 256 MiB limit) and send ten
    bytes of it: the server must not reserve 4 GB for them."""
    before = rss_kib(served.pid)
    socks = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", served.data_port))
        s.sendall(p.Header(p.Op.PUT, i, 1, 200 << 20).pack() + b"0123456789")
        socks.append(s)
    with CacheClient(served.data_url) as c:  # served while those wait for their bodies
        assert c.put(GOOD) == 3 and c.lookup([b[0] for b in GOOD]) == ["dram"] * 3
    grown_mib = (rss_kib(served.pid) - before) / 1024
    for s in socks:
        s.close()
    assert grown_mib < 32, f"the server grew by {grown_mib:.0f} MiB for bodies it never received"
