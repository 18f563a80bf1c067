"""The router policies a simulated fleet compares, one small class each.

A policy answers ``place(key, loads) -> replica index`` for each arriving request and
hears ``release(replica)`` when that request completes. ``loads`` is the fleet's in-flight
count per replica, read-only: the fleet owns it. The two hashing policies use the
product's own ``HashRing``, so the benchmark measures the router's code: plain consistent
hashing is ``ring.owner``; bounded loads is ``ring.acquire`` / ``ring.release`` with
in-flight requests as the load, exactly as ``engine.router.proxy.Router`` calls them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hashing.ring import HashRing


def replica_name(i: int) -> str:
    return f"replica-{i}"


class RoundRobin:
    """Replica 0, 1, ..., n-1, 0, ...: even request shares, no affinity."""

    def __init__(self, replicas: int, epsilon: float):
        self._replicas = replicas
        self._next = 0

    def place(self, key: str, loads: Sequence[int]) -> int:
        node = self._next
        self._next = (self._next + 1) % self._replicas
        return node

    def release(self, node: int) -> None:
        pass


class LeastLoaded:
    """The replica with the fewest requests in flight; ties go to the first one after the
    last choice, so an idle fleet is used round robin rather than replica 0 first."""

    def __init__(self, replicas: int, epsilon: float):
        self._replicas = replicas
        self._last = -1

    def place(self, key: str, loads: Sequence[int]) -> int:
        n = self._replicas
        order = [(self._last + 1 + i) % n for i in range(n)]
        self._last = min(order, key=loads.__getitem__)  # min keeps the first of equals
        return self._last

    def release(self, node: int) -> None:
        pass


class ConsistentHash:
    """Plain consistent hashing: the key's owner on the ring, whatever its load."""

    def __init__(self, replicas: int, epsilon: float):
        self._ring = HashRing([replica_name(i) for i in range(replicas)], epsilon=epsilon)
        self._index = {replica_name(i): i for i in range(replicas)}

    def place(self, key: str, loads: Sequence[int]) -> int:
        return self._index[self._ring.owner(key)]

    def release(self, node: int) -> None:
        pass


class BoundedLoads:
    """Consistent hashing with bounded loads: ``HashRing.acquire`` counts the request on the
    first replica clockwise below ``ceil((1 + ε) · mean)`` and ``release`` uncounts it.

    The ring keeps its own load counts, which must equal the fleet's in-flight counts;
    a difference is a bug in the simulation and raises.
    """

    def __init__(self, replicas: int, epsilon: float):
        self.ring = HashRing([replica_name(i) for i in range(replicas)], epsilon=epsilon)
        self._index = {replica_name(i): i for i in range(replicas)}

    def place(self, key: str, loads: Sequence[int]) -> int:
        node = self.ring.acquire(key)
        if node is None:
            raise RuntimeError("bug: the simulated ring has no replica")
        i = self._index[node]
        if self.ring.loads()[node] != loads[i] + 1:
            raise RuntimeError(f"bug: the ring counts {self.ring.loads()[node]} on {node}, "
                               f"the fleet {loads[i]} + this request")
        return i

    def release(self, node: int) -> None:
        self.ring.release(replica_name(node))


# policy name -> class; the order is the table's.
POLICIES: dict[str, Callable[[int, float], RoundRobin | LeastLoaded | ConsistentHash | BoundedLoads]] = {
    "round-robin": RoundRobin,
    "least-loaded": LeastLoaded,
    "consistent-hash": ConsistentHash,
    "bounded-load": BoundedLoads,
}
