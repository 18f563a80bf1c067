"""Client calls as data: each public client method becomes a ``Plan`` of requests (one per
batch that fits the server's limits), a parser for each reply, a merge of the parsed
replies, and the fallback answer when anything fails. The sync and the async client share
these and differ only in how bytes move.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cacheserver import protocol as p
from clients.shared import Mapped, SharedSlab
from tiers.base import Location


class ServerError(Exception):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{p.Status(status).name}: {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    op: p.Op
    count: int
    buffers: list

    def frame(self, request_id: int) -> list:
        header = p.Header(self.op, request_id, self.count, p.body_size(self.buffers)).pack()
        return [header, *self.buffers]


@dataclass(frozen=True, slots=True)
class Plan:
    requests: list[Request]
    parse: Callable[[int, memoryview], Any]  # (reply count, body) -> partial result
    merge: Callable[[list], Any]
    fallback: Any


def check_reply(header: p.Header, body) -> None:
    if header.code != p.Status.OK:
        if header.code not in _STATUSES:  # not an answer but noise: the stream cannot be trusted
            raise p.FrameError(f"reply status {header.code} is not defined by the protocol")
        raise ServerError(header.code, bytes(body).decode(errors="replace"))


_STATUSES = frozenset(p.Status)


def check_order(header: p.Header, request_id: int) -> None:
    """Replies come back in the order of their requests; anything else means the stream
    is out of step and the connection cannot be trusted."""
    if header.request_id != request_id:
        raise p.FrameError(f"reply {header.request_id} out of order (expected {request_id})")


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [items[:0]]


def _count(count: int, body) -> int:
    return count


def lookup_plan(keys: Sequence[bytes], max_batch: int) -> Plan:
    def merge(parts: list[list[str]]) -> list[str]:
        out: list[str] = []
        for chunk, tiers in zip(_chunks(keys, max_batch), parts, strict=True):
            out += tiers
            if len(tiers) < len(chunk):  # a miss ends the prefix
                break
        return out

    requests = [Request(p.Op.LOOKUP, len(c), [p.keys_body(list(c))]) for c in _chunks(keys, max_batch)]
    return Plan(requests, lambda n, body: p.parse_lookup(body, n), merge, [])


def get_plan(keys: Sequence[bytes], max_batch: int) -> Plan:
    requests = [Request(p.Op.GET, len(c), [p.keys_body(list(c))]) for c in _chunks(keys, max_batch)]
    return Plan(requests, lambda n, body: p.parse_get(body, n),
                lambda parts: [x for part in parts for x in part], [None] * len(keys))


def get_mapped_plan(keys: Sequence[bytes], max_batch: int, slabs: Sequence[SharedSlab],
                    dests: Sequence[memoryview] | None = None, copy: bool = True) -> Plan:
    """GET through shared slabs: blocks in ``slabs`` are copied out of them (host slabs
    only; into ``dests`` when given: one buffer per key, one request), or with
    ``copy=False`` handed back as ``Mapped`` for the caller to copy; the rest arrive inline."""
    chunks = _chunks(keys, max_batch)
    if dests is not None and len(chunks) != 1:
        raise ValueError(f"copying into buffers takes at most {max_batch} keys")
    by_name = {slab.name: slab for slab in slabs}
    sizes = {name: slab.slab_bytes for name, slab in by_name.items()}

    def parse(n: int, body: memoryview) -> list:
        located = p.parse_get_mapped(body, n, sizes)
        if copy:
            return by_name["dram"].copy_out(located, dests)
        return [Mapped(by_name[r.tier], r) if isinstance(r, Location) else r for r in located]

    requests = [Request(p.Op.GET_MAPPED, len(c), [p.get_mapped_body(list(c), by_name)]) for c in chunks]
    return Plan(requests, parse, lambda parts: [x for part in parts for x in part], [None] * len(keys))


def put_plan(entries: Sequence[tuple[bytes, bytes, int, Any]], max_batch: int, max_frame: int) -> Plan:
    """``entries`` are ``(key, parent, depth, payload)``; batches also respect the frame limit."""
    batches, batch, size = [], [], 0
    for e in entries:
        n = memoryview(e[3]).nbytes + p.PUT_ENTRY.size
        if batch and (len(batch) >= max_batch or size + n > max_frame):
            batches.append(batch)
            batch, size = [], 0
        batch.append(e)
        size += n
    if batch:
        batches.append(batch)
    requests = [Request(p.Op.PUT, len(b), p.put_buffers(b)) for b in batches]
    return Plan(requests, _count, sum, None)  # None: not stored (some batches may have been)


def keys_plan(op: p.Op, keys: Sequence[bytes], max_batch: int) -> Plan:
    """DELETE or UNPIN: the reply counts the blocks affected."""
    requests = [Request(op, len(c), [p.keys_body(list(c))]) for c in _chunks(keys, max_batch)]
    return Plan(requests, _count, sum, 0)


def pin_plan(keys: Sequence[bytes], tier: str | None, ttl: float | None, max_batch: int) -> Plan:
    requests = [Request(p.Op.PIN, len(c), [p.pin_body(list(c), tier, ttl)]) for c in _chunks(keys, max_batch)]
    return Plan(requests, _count, sum, 0)


def ping_plan() -> Plan:
    return Plan([Request(p.Op.PING, 0, [])], _count, lambda parts: True, False)
