"""Prometheus metrics, read from the store's and the data plane's own counters at scrape
time (no second set of counters to keep in step). Names are prefixed ``kvtier_``."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cacheserver.dataplane import DataPlaneCounters
from tiers.store import TieredStore

_TIER_GAUGES = {"capacity_bytes": "capacity in bytes", "used_bytes": "bytes in use",
                "blocks": "resident blocks", "pinned_blocks": "pinned blocks"}
_TIER_COUNTERS = ("hits", "misses", "evictions", "promotions", "demotions", "bytes_in", "bytes_out",
                  "write_errors")
_STORE_COUNTERS = ("puts", "put_bytes", "gets", "hits", "misses", "dropped", "stranded",
                   "checksum_failures", "rejected_full", "remote_promotions")
_REMOTE_COUNTERS = {"rounds": "batched read rounds", "hits": "blocks found", "misses": "blocks not found "
                    "(absent, or lost to a fault)", "corrupt": "values refused (checksum, header, torn, "
                    "foreign) and deleted", "errors": "blocks whose read failed", "skipped": "blocks not "
                    "asked while the breaker was open", "bytes_in": "verified payload bytes read",
                    "writes": "blocks written behind", "write_bytes": "value bytes written",
                    "write_errors": "blocks whose write failed", "dropped_writes": "blocks not written "
                    "(queue full or breaker open)", "breaker_opens": "times the breaker opened"}


class KvtierCollector(Collector):
    def __init__(self, store: TieredStore, plane: DataPlaneCounters):
        self.store = store
        self.plane = plane

    def collect(self):
        stats = self.store.stats()
        yield GaugeMetricFamily("kvtier_blocks", "blocks in the store", value=stats["blocks"])
        yield GaugeMetricFamily("kvtier_hit_rate", "hits / gets since start", value=stats["hit_rate"])
        for name in _STORE_COUNTERS:
            yield CounterMetricFamily(f"kvtier_store_{name}", f"store {name}", value=stats[name])
        for name, doc in _TIER_GAUGES.items():
            g = GaugeMetricFamily(f"kvtier_tier_{name}", f"tier {doc}", labels=["tier"])
            for t in stats["tiers"]:
                g.add_metric([t["name"]], t[name])
            yield g
        for name in _TIER_COUNTERS:
            c = CounterMetricFamily(f"kvtier_tier_{name}", f"tier {name}", labels=["tier"])
            for t in stats["tiers"]:
                c.add_metric([t["name"]], t[name])
            yield c
        if stats["remote"] is not None:
            yield from _remote(stats["remote"])
        yield from self._data_plane()

    def _data_plane(self):
        p = self.plane
        req = CounterMetricFamily("kvtier_dataplane_requests", "data-plane requests", labels=["op"])
        for op, n in sorted(p.requests.items()):
            req.add_metric([op], n)
        err = CounterMetricFamily("kvtier_dataplane_errors", "data-plane error replies", labels=["status"])
        for status, n in sorted(p.errors.items()):
            err.add_metric([status], n)
        yield req
        yield err
        yield CounterMetricFamily("kvtier_dataplane_bytes_in", "request body bytes", value=p.bytes_in)
        yield CounterMetricFamily("kvtier_dataplane_bytes_out", "reply body bytes", value=p.bytes_out)
        yield CounterMetricFamily("kvtier_dataplane_mapped_bytes", "payload bytes clients copied out of "
                                  "shared memory", value=p.mapped_bytes)
        yield CounterMetricFamily("kvtier_dataplane_connections", "connections accepted", value=p.connections)
        yield GaugeMetricFamily("kvtier_dataplane_open_connections", "open connections",
                                value=p.open_connections)


def _remote(remote: dict):
    for name, doc in _REMOTE_COUNTERS.items():
        yield CounterMetricFamily(f"kvtier_remote_{name}", f"remote tier: {doc}", value=remote[name])
    yield GaugeMetricFamily("kvtier_remote_queued_bytes", "remote tier: bytes waiting to be written",
                            value=remote["queued_bytes"])
    yield GaugeMetricFamily("kvtier_remote_breaker_open", "remote tier: 1 while the breaker is open",
                            value=int(remote["breaker_open"]))
    faults = CounterMetricFamily("kvtier_remote_faults", "remote tier: faults by kind", labels=["kind"])
    for kind, n in sorted(remote["faults"].items()):
        faults.add_metric([kind], n)
    yield faults


def registry_for(store: TieredStore, plane: DataPlaneCounters) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KvtierCollector(store, plane))
    return registry
