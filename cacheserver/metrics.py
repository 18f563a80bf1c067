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
                   "checksum_failures", "rejected_full")


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


def registry_for(store: TieredStore, plane: DataPlaneCounters) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KvtierCollector(store, plane))
    return registry
