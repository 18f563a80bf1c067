"""The data plane's logic: check a frame header, decode a request, call the store, build
the reply. No sockets here: the socket server (``cacheserver.dataserver``) only moves bytes
in and out, and tests call this directly.

Thread-safe: the store takes its own lock; the counters are plain integers updated under
the GIL, which is enough for counters that only ever grow.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from cacheserver import protocol as p
from cacheserver.arenas import ArenaPool
from cacheserver.faults import Faults
from tiers.base import PayloadSizeError, StoreFullError, UnknownBlockError, make_block
from tiers.store import TieredStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int
    max_batch: int


@dataclass
class DataPlaneCounters:
    requests: Counter = field(default_factory=Counter)  # op name -> requests
    errors: Counter = field(default_factory=Counter)  # status name -> error replies
    bytes_in: int = 0  # request bodies
    bytes_out: int = 0  # reply bodies
    connections: int = 0  # accepted so far
    open_connections: int = 0
    injected_delays: int = 0  # requests held back on purpose (testing only; see ``Faults``)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    count: int
    buffers: list  # the body, as buffers to send one after another
    close: bool = False  # the connection closes after this reply
    sent: Callable[[], None] | None = None  # to call once the reply is sent (frees its arena)


def error_reply(status: p.Status, message: str) -> Reply:
    return Reply(status, 0, [message.encode()], close=status == p.Status.BAD_FRAME)


class DataPlane:
    def __init__(self, store: TieredStore, limits: Limits, faults: Faults | None = None):
        self.store = store
        self.limits = limits
        self.faults = faults or Faults()
        self.counters = DataPlaneCounters()
        self.arenas = ArenaPool()
        self._handlers = {
            p.Op.PING: self._ping,
            p.Op.LOOKUP: self._lookup,
            p.Op.GET: self._get,
            p.Op.PUT: self._put,
            p.Op.DELETE: self._delete,
            p.Op.PIN: self._pin,
            p.Op.UNPIN: self._unpin,
        }

    def check(self, header: p.Header) -> Reply | None:
        """An error reply for a header whose body must not even be read, else ``None``.

        Called before the body is received, so a frame that merely claims a huge body
        never makes the server allocate it.
        """
        if header.code not in self._handlers:
            return self.refuse(p.Status.BAD_FRAME, f"unknown op {header.code}")
        if header.body_len > self.limits.max_frame_bytes:
            return self.refuse(p.Status.BAD_FRAME, f"frame body of {header.body_len} B exceeds the "
                              f"server's limit of {self.limits.max_frame_bytes} B; send smaller batches")
        if header.count > self.limits.max_batch:
            return self.refuse(p.Status.BAD_FRAME, f"batch of {header.count} keys exceeds the "
                              f"server's limit of {self.limits.max_batch}; split it")
        return None

    def handle(self, header: p.Header, body: memoryview) -> Reply:
        """The reply to one request whose header passed ``check``."""
        op = p.Op(header.code)
        self.counters.requests[op.name] += 1
        self.counters.bytes_in += len(body)
        if self.faults.active:
            self.counters.injected_delays += 1
            self.faults.before_request()
        try:
            reply = self._handlers[op](header.count, body)
        except p.FrameError as e:
            return self.refuse(p.Status.BAD_FRAME, str(e))
        except UnknownBlockError as e:
            return self.refuse(p.Status.UNKNOWN_BLOCK, str(e))
        except StoreFullError as e:
            return self.refuse(p.Status.STORE_FULL, str(e))
        except (PayloadSizeError, ValueError) as e:
            return self.refuse(p.Status.BAD_REQUEST, str(e))
        except Exception:
            # A bug below us: answer (the client falls back), count it, keep the traceback.
            log.exception("data plane: %s failed", op.name)
            return self.refuse(p.Status.SERVER_ERROR, f"{op.name} failed inside the server; see its log")
        self.counters.bytes_out += p.body_size(reply.buffers)
        return reply

    def refuse(self, status: p.Status, message: str) -> Reply:
        self.counters.errors[status.name] += 1
        return error_reply(status, message)

    # -- one method per op ------------------------------------------------------------

    def _ping(self, count: int, body: memoryview) -> Reply:
        return Reply(p.Status.OK, 0, [])

    def _lookup(self, count: int, body: memoryview) -> Reply:
        names = self.store.tier_names
        found = self.store.lookup(p.split_keys(body, count))
        ids = [names.index(t) for t in found]
        return Reply(p.Status.OK, len(ids), [p.lookup_body(ids, names)])

    def _get(self, count: int, body: memoryview) -> Reply:
        """Payloads are copied once, into an arena from the pool (memory already mapped, no
        allocation per block), and sent from there; the arena goes back once the reply is
        sent (``Reply.sent``)."""
        keys = p.split_keys(body, count)
        arenas = [self.arenas.take(sum(max(0, n) for n in self.store.sizes(keys)))]
        payloads: list = []
        while True:
            payloads += self.store.get_into(keys[len(payloads):], arenas[-1])
            if len(payloads) == len(keys):
                break
            # A block arrived since the sizes were read: the rest goes into another arena.
            arenas.append(self.arenas.take(2 * arenas[-1].nbytes))

        def sent() -> None:
            for arena in arenas:
                self.arenas.give(arena)

        return Reply(p.Status.OK, count, p.get_buffers(payloads), sent=sent)

    def _put(self, count: int, body: memoryview) -> Reply:
        entries = p.split_put(body, count)
        blocks = [make_block(e.key, e.parent, e.depth, e.payload) for e in entries]
        return Reply(p.Status.OK, self.store.put(blocks), [])

    def _delete(self, count: int, body: memoryview) -> Reply:
        return Reply(p.Status.OK, self.store.delete(p.split_keys(body, count)), [])

    def _pin(self, count: int, body: memoryview) -> Reply:
        keys, tier, ttl = p.split_pin(body, count)
        return Reply(p.Status.OK, self.store.pin(keys, tier, ttl), [])

    def _unpin(self, count: int, body: memoryview) -> Reply:
        return Reply(p.Status.OK, self.store.unpin(p.split_keys(body, count)), [])
