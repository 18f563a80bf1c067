"""``ShardedCacheClient``: one engine, several cache services; each block lives on the
service the consistent-hash ring assigns its key to.

Keys are spread by ``hashing.ring.HashRing`` without bounded loads (a key's home must not
depend on what else was placed), so adding a service to n moves about 1/(n+1) of the keys.
A call splits its keys by owner, asks the owners at once (a thread each), and puts the
answers back in the caller's order. A lookup's cached prefix ends at the first key whose
owner lacks it: each owner answers the leading run of *its* keys it holds, and the first
key past that run is missing. Every owner has its own ``CacheClient`` (pool, deadline,
breaker, shared memory on ``unix://``), so one service down costs misses for its keys
only, never an exception.

``open_client(url)`` gives a ``CacheClient`` for one URL and a ``ShardedCacheClient`` for
several, comma-separated: what ``kvtier engine --cache-url`` takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

from clients.cache_client import CacheClient, Entry
from clients.counters import ClientCounters
from clients.guard import ClientOptions
from hashing.ring import HashRing


def split_urls(url: str) -> list[str]:
    """The service URLs in ``url``: one, or several separated by commas (sharded)."""
    urls = [u.strip() for u in url.split(",")]
    if not any(urls):
        raise ValueError("no cache service URL given")
    if not all(urls):
        raise ValueError(f"the cache URL list {url!r} has an empty entry; "
                         "separate services with single commas")
    return urls


def open_client(url: str, options: ClientOptions | None = None) -> CacheClient | ShardedCacheClient:
    """A client for ``url``: one service, or several separated by commas (sharded)."""
    urls = split_urls(url)
    return CacheClient(urls[0], options) if len(urls) == 1 else ShardedCacheClient(urls, options)


class ShardedCacheClient:
    def __init__(self, urls: Sequence[str], options: ClientOptions | None = None):
        if len(set(urls)) != len(urls):
            raise ValueError(f"a cache service is listed twice in {list(urls)}")
        self.clients = {url: CacheClient(url, options) for url in urls}  # ValueError for a bad URL
        self.ring = HashRing(list(urls))
        self._pool = ThreadPoolExecutor(len(urls), thread_name_prefix="kvtier-shard")

    @property
    def counters(self) -> ClientCounters:
        """Every service's client counters, summed."""
        total = ClientCounters()
        for client in self.clients.values():
            for f in fields(ClientCounters):
                setattr(total, f.name, getattr(total, f.name) + getattr(client.counters, f.name))
        return total

    def owner(self, key: bytes) -> str:
        return self.ring.owner(key)

    # -- the calls, as ``CacheClient``'s ------------------------------------------------

    def lookup(self, keys: Sequence[bytes]) -> list[str]:
        groups = self._split(keys)
        answers = self._each(groups, lambda c, rows: c.lookup([keys[i] for i in rows]))
        tiers: list[str | None] = [None] * len(keys)
        end = len(keys)
        for url, rows in groups.items():
            found = answers[url]
            for i, tier in zip(rows, found, strict=False):
                tiers[i] = tier
            if len(found) < len(rows):
                end = min(end, rows[len(found)])  # this owner's first missing key
        return tiers[:end]

    def get(self, keys: Sequence[bytes]) -> list[memoryview | None]:
        groups = self._split(keys)
        answers = self._each(groups, lambda c, rows: c.get([keys[i] for i in rows]))
        return self._merge(len(keys), groups, answers)

    def get_mapped(self, keys: Sequence[bytes]) -> list:
        groups = self._split(keys)
        answers = self._each(groups, lambda c, rows: c.get_mapped([keys[i] for i in rows]))
        return self._merge(len(keys), groups, answers)

    def get_into(self, keys: Sequence[bytes], outs: Sequence[memoryview]) -> list[int | None]:
        if len(keys) != len(outs):
            raise ValueError("get_into takes one buffer per key")
        groups = self._split(keys)
        answers = self._each(groups, lambda c, rows: c.get_into([keys[i] for i in rows],
                                                                [outs[i] for i in rows]))
        return self._merge(len(keys), groups, answers)

    def put(self, entries: Sequence[Entry]) -> int | None:
        """How many blocks were new; ``None`` when the put to some owner failed."""
        groups = self._split([e[0] for e in entries])
        counts = list(self._each(groups, lambda c, rows: c.put([entries[i] for i in rows])).values())
        return None if None in counts else sum(counts)

    def delete(self, keys: Sequence[bytes]) -> int:
        return self._count(keys, lambda c, ks: c.delete(ks))

    def pin(self, keys: Sequence[bytes], tier: str | None = None, ttl: float | None = None) -> int:
        return self._count(keys, lambda c, ks: c.pin(ks, tier, ttl))

    def unpin(self, keys: Sequence[bytes]) -> int:
        return self._count(keys, lambda c, ks: c.unpin(ks))

    def ping(self) -> bool:
        """True when every service answers."""
        return all(self._each({url: [] for url in self.clients}, lambda c, rows: c.ping()).values())

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self._pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the machinery ------------------------------------------------------------------

    def _split(self, keys: Sequence[bytes]) -> dict[str, list[int]]:
        """Positions of the keys each service owns, in the caller's order."""
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self.ring.owner(key), []).append(i)
        return groups

    def _each(self, groups: dict[str, list[int]], call: Callable) -> dict:
        """``call(client, positions)`` for every owner at once; the answers by owner."""
        if len(groups) == 1:
            (url, rows), = groups.items()
            return {url: call(self.clients[url], rows)}
        futures = {url: self._pool.submit(call, self.clients[url], rows) for url, rows in groups.items()}
        return {url: f.result() for url, f in futures.items()}

    def _count(self, keys: Sequence[bytes], call: Callable) -> int:
        groups = self._split(keys)
        return sum(self._each(groups, lambda c, rows: call(c, [keys[i] for i in rows])).values())

    @staticmethod
    def _merge(n: int, groups: dict[str, list[int]], answers: dict) -> list:
        out: list = [None] * n
        for url, rows in groups.items():
            for i, answer in zip(rows, answers[url], strict=True):
                out[i] = answer
        return out
