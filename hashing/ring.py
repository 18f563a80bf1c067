"""Consistent hashing with virtual nodes and bounded loads.

Each node owns ``vnodes`` points on a 64-bit ring; a key belongs to the first point
clockwise of its hash. With bounded loads (Mirrokni, Thorup, Zadimoghaddam 2017), a key
goes to the first node clockwise whose load is below ``ceil((1 + ε) · mean)``, where the
mean counts the item being placed; so no node carries more than that, and a key moves
off its owner only while the owner is full. Adding one node to ten moves about a tenth of
the keys.

The ring owns the load counts: ``acquire`` places a key and counts it against its node,
``release`` uncounts it. Thread-safe.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator

import xxhash


def _point(data: str | bytes) -> int:
    return xxhash.xxh3_64_intdigest(data.encode() if isinstance(data, str) else data)


class HashRing:
    def __init__(self, nodes: list[str] | tuple[str, ...] = (), vnodes: int = 160, epsilon: float = 0.25):
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        if epsilon <= 0:
            raise ValueError(f"epsilon must be positive (0.25 is usual), got {epsilon}")
        self.vnodes = vnodes
        self.epsilon = epsilon
        self._lock = threading.Lock()
        self._points: list[int] = []  # sorted ring positions
        self._owners: list[str] = []  # node at each position
        self._loads: dict[str, int] = {}
        for node in nodes:
            self.add_node(node)

    # -- membership ---------------------------------------------------------------------

    @property
    def nodes(self) -> list[str]:
        return sorted(self._loads)

    def add_node(self, node: str) -> None:
        with self._lock:
            if node in self._loads:
                return
            self._loads[node] = 0
            for i in range(self.vnodes):
                p = _point(f"{node}#{i}")
                at = bisect.bisect(self._points, p)
                self._points.insert(at, p)
                self._owners.insert(at, node)

    def remove_node(self, node: str) -> None:
        with self._lock:
            if self._loads.pop(node, None) is None:
                return
            keep = [(p, o) for p, o in zip(self._points, self._owners, strict=True) if o != node]
            self._points = [p for p, _ in keep]
            self._owners = [o for _, o in keep]

    # -- placement ----------------------------------------------------------------------

    def walk(self, key: str | bytes) -> Iterator[str]:
        """Distinct nodes clockwise from ``key``'s position: its owner first, then the
        nodes that take over if the owner is full or gone."""
        points, owners = self._points, self._owners  # a consistent snapshot
        if not points:
            return
        start = bisect.bisect(points, _point(key)) % len(points)
        seen: set[str] = set()
        for i in range(len(points)):
            node = owners[(start + i) % len(points)]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self._loads):
                    return

    def owner(self, key: str | bytes) -> str | None:
        """Plain consistent hashing: the key's node, ignoring loads."""
        return next(self.walk(key), None)

    def capacity(self) -> int:
        """The most keys any node may hold once one more is placed."""
        total = sum(self._loads.values()) + 1
        return math.ceil((1 + self.epsilon) * total / max(1, len(self._loads)))

    def acquire(self, key: str | bytes, exclude: frozenset[str] = frozenset()) -> str | None:
        """Place ``key`` on the first node clockwise that is below the bound, count it
        there and return the node; ``None`` when the ring has no node outside ``exclude``."""
        with self._lock:
            cap = self.capacity()
            fallback = None
            for node in self.walk(key):
                if node in exclude:
                    continue
                fallback = fallback or node
                if self._loads[node] < cap:
                    self._loads[node] += 1
                    return node
            # Every eligible node is at the bound (only possible with exclusions).
            if fallback is not None:
                self._loads[fallback] += 1
            return fallback

    def release(self, node: str) -> None:
        with self._lock:
            if self._loads.get(node, 0) > 0:
                self._loads[node] -= 1

    def loads(self) -> dict[str, int]:
        with self._lock:
            return dict(self._loads)
