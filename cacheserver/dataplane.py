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
from tiers.base import Location, PayloadSizeError, StoreFullError, UnknownBlockError, make_block
from tiers.sharedmem import fence
from tiers.store import NotDurableError, TieredStore

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
    injected_garbage: int = 0  # replies replaced by corrupted frames on purpose (testing only)
    mapped_bytes: int = 0  # payload bytes GET_MAPPED clients copied out of shared memory
    sent_from_dram: int = 0  # GET payload bytes sent straight from the DRAM tier (no copy)
    changed_while_sent: int = 0  # of those, blocks overwritten mid-send (answered as misses)


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    count: int
    buffers: list  # the body, as buffers to send one after another
    close: bool = False  # the connection closes after this reply
    sent: Callable[[], None] | None = None  # to call once the reply is sent (frees its arena)
    fds: tuple[int, ...] = ()  # descriptors to pass with the reply (Unix socket); closed once sent
    trailer: Callable[[], bytes] | None = None  # the body's last bytes, made once the buffers are sent
    trailer_len: int = 0

    @property
    def body_len(self) -> int:
        return p.body_size(self.buffers) + self.trailer_len


def error_reply(status: p.Status, message: str) -> Reply:
    return Reply(status, 0, [message.encode()], close=status == p.Status.BAD_FRAME)


class DataPlane:
    def __init__(self, store: TieredStore, limits: Limits, faults: Faults | None = None):
        self.store = store
        self.limits = limits
        self.faults = faults or Faults()
        self.counters = DataPlaneCounters()
        self.arenas = ArenaPool()
        # What MAP ("dram", host memory) and MAP_DEVICE ("hbm", CUDA IPC) offer.
        self.slabs = {name: t for name, t in store.shared_tiers.items() if name in p.SLABS}
        self.locating_tier = store.locating_tier
        self._handlers = {
            p.Op.PING: self._ping,
            p.Op.LOOKUP: self._lookup,
            p.Op.GET: self._get,
            p.Op.PUT: self._put,
            p.Op.DELETE: self._delete,
            p.Op.PIN: self._pin,
            p.Op.UNPIN: self._unpin,
            p.Op.MAP: self._map,
            p.Op.GET_MAPPED: self._get_mapped,
            p.Op.MAP_DEVICE: self._map_device,
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

    def handle(self, header: p.Header, body: memoryview, local: bool = False) -> Reply:
        """The reply to one request whose header passed ``check``; ``local``: it came over
        the Unix socket (only there is shared memory offered)."""
        op = p.Op(header.code)
        self.counters.requests[op.name] += 1
        self.counters.bytes_in += len(body)
        if self.faults.delay_s:
            self.counters.injected_delays += 1  # counted first: a test may look while it waits
            self.faults.before_request()
        try:
            if op in (p.Op.MAP, p.Op.MAP_DEVICE) and not local:
                raise ValueError("shared memory is offered on the Unix socket only")
            reply = self._handlers[op](header.count, body)
        except p.FrameError as e:
            return self.refuse(p.Status.BAD_FRAME, str(e))
        except UnknownBlockError as e:
            return self.refuse(p.Status.UNKNOWN_BLOCK, str(e))
        except (StoreFullError, NotDurableError) as e:
            full = isinstance(e, StoreFullError)
            return self.refuse(p.Status.STORE_FULL if full else p.Status.NOT_DURABLE, str(e))
        except (PayloadSizeError, ValueError) as e:
            return self.refuse(p.Status.BAD_REQUEST, str(e))
        except Exception:
            # A bug below us: answer (the client falls back), count it, keep the traceback.
            log.exception("data plane: %s failed", op.name)
            return self.refuse(p.Status.SERVER_ERROR, f"{op.name} failed inside the server; see its log")
        body_len = reply.body_len
        # Replies that pass descriptors (shared memory) are never replaced: they own them.
        if self.faults.garbage_rate and not reply.fds:
            garbage = self.faults.garbage(reply.status, reply.count, body_len)
            if garbage is not None:
                if reply.sent is not None:
                    reply.sent()  # the garbage does not use the reply's arena
                self.counters.injected_garbage += 1
                reply = Reply(garbage.status, garbage.count, [garbage.body])
                body_len = reply.body_len
        self.counters.bytes_out += body_len
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
        """Blocks in the DRAM tier are sent straight from it, held there (no eviction or
        demotion) until the reply is out; the trailer then says which of them stayed whole
        (only a delete can overwrite one meanwhile). Blocks in other tiers are copied once,
        into a pooled arena, and sent from there."""
        sender = () if self.locating_tier is None else (self.locating_tier.name,)
        results, done = self._fetch(p.split_keys(body, count), locate=sender, hold=True)
        located = [r for r in results if isinstance(r, Location)]
        self.counters.sent_from_dram += sum(r.size for r in located)

        def whole() -> bytes:
            if not located:
                return p.get_trailer([True] * count)
            fence()  # the payloads were read (sent) before their generations are
            current = iter(self.locating_tier.current(located))
            flags = [next(current) if isinstance(r, Location) else True for r in results]
            self.counters.changed_while_sent += flags.count(False)
            return p.get_trailer(flags)

        payloads = [self.locating_tier.view(r) if isinstance(r, Location) else r for r in results]
        return Reply(p.Status.OK, count, p.get_buffers(payloads), sent=done, trailer=whole, trailer_len=count)

    def _get_mapped(self, count: int, body: memoryview) -> Reply:
        """GET for a client that mapped shared slabs: blocks in those come back as their
        location and generation (the client copies them itself); the others as payloads."""
        keys, slabs = p.split_get_mapped(body, count)
        offered = [name for name in slabs if name in self.slabs]
        if offered != slabs:
            raise ValueError(f"this service shares no {' or '.join(set(slabs) - set(offered))} slab; "
                             "map what MAP and MAP_DEVICE offer, or use GET")
        results, sent = self._fetch(keys, locate=slabs, hold=False)
        self.counters.mapped_bytes += sum(r.size for r in results if isinstance(r, Location))
        return Reply(p.Status.OK, count, p.get_mapped_buffers(results), sent=sent)

    def _fetch(self, keys: list[bytes], locate: bool, hold: bool) -> tuple[list, Callable[[], None]]:
        """The store's answer for each key (payloads copied into pooled arenas, or where
        they lie), and the callback that gives the arenas back and ends the hold."""
        arenas = [self.arenas.take(sum(max(0, n) for n in self.store.sizes(keys)))]
        results: list = []
        while True:
            results += self.store.get_into(keys[len(results):], arenas[-1], locate, hold)
            if len(results) == len(keys):
                break
            # A block arrived since the sizes were read: the rest goes into another arena.
            # (Blocks the remote tier answered are sized only now.)
            rest = sum(max(0, n) for n in self.store.sizes(keys[len(results):]))
            arenas.append(self.arenas.take(max(2 * arenas[-1].nbytes, rest)))

        def done() -> None:
            if hold:
                self.store.release(k for k, r in zip(keys, results, strict=True) if isinstance(r, Location))
            for arena in arenas:
                self.arenas.give(arena)

        return results, done

    def _map(self, count: int, body: memoryview) -> Reply:
        return self._share("dram", p.map_body, "memory (it needs --unix-socket and x86-64, and is off "
                           "with --no-shared-memory); use GET")

    def _map_device(self, count: int, body: memoryview) -> Reply:
        return self._share("hbm", p.device_map_body, "GPU memory (it needs --hbm-gb, CUDA, CuPy and "
                           "--unix-socket, and is off with --no-shared-memory)")

    def _share(self, slab: str, reply_body: Callable[..., bytes], missing: str) -> Reply:
        """MAP or MAP_DEVICE: the slab's descriptors, passed with the reply, and its layout."""
        tier = self.slabs.get(slab)
        if tier is None:
            raise ValueError(f"this service shares no {missing}")
        fds, layout = tier.share()
        return Reply(p.Status.OK, len(fds), [reply_body(**layout)], fds=tuple(fds))

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
