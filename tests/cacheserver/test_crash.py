"""Crash safety of a real ``kvtier serve``: SIGKILL it in the middle of a storm of puts and
gets from several client threads, restart it on the same folder, and check that it starts,
that every block it serves is whole and right (payloads are derived from keys, so a
half-written or mixed-up block shows), and, in durable mode (``--flash-sync``), that every
put acknowledged before the kill is still there."""

from __future__ import annotations

import random
import signal
import threading
import time

import httpx

from clients.cache_client import CacheClient
from clients.guard import ClientOptions
from tests.cacheserver.blocks import chain, payload_for

THREADS = 3
OPTIONS = ClientOptions(timeout=5.0, retries=0, breaker_threshold=1000)


class Storm:
    """Client threads that put chains of blocks, look them up and read them back until the
    service dies; ``acked`` holds every block whose put the service acknowledged."""

    def __init__(self, url: str, name: str):
        self.url = url
        self.name = name
        self.acked: dict[bytes, int] = {}  # key -> payload size
        self.bad: list[str] = []  # blocks served wrong while the service was up
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, args=(i,)) for i in range(THREADS)]

    def start(self) -> Storm:
        for t in self._threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self._threads:
            t.join(30)

    def _work(self, thread: int) -> None:
        client = CacheClient(self.url, OPTIONS)
        for n in range(100_000):
            blocks = chain(f"{self.name}-t{thread}-{n}", 4, size=4096 + 1024 * (n % 8))
            if client.put(blocks) != len(blocks):
                break  # the service is gone: this put was not acknowledged
            with self._lock:
                self.acked.update((b[0], len(b[3])) for b in blocks)
            got = client.get([b[0] for b in blocks])
            if client.counters.failures:
                break
            self.bad += [b[0].hex() for b, g in zip(blocks, got, strict=True) if g is None or g != b[3]]
        client.close()


def read_all(data_url: str, sizes: dict[bytes, int]) -> tuple[int, list[str]]:
    """(blocks missing, keys of blocks served with a payload other than their key's)."""
    with CacheClient(data_url, OPTIONS) as c:
        keys = list(sizes)
        got = c.get(keys)
        assert c.counters.failures == 0
    missing = sum(g is None for g in got)
    wrong = [k.hex() for k, g in zip(keys, got, strict=True)
             if g is not None and g != payload_for(k, sizes[k])]
    return missing, wrong


def check_after_restart(served, acked: dict[bytes, int]) -> tuple[int, int]:
    """(blocks served, acknowledged blocks missing); asserts that every served block verifies."""
    listing = httpx.get(served.rest_url + "/v1/blocks", params={"limit": 10_000}).json()
    assert listing["total"] <= 10_000
    listed = {bytes.fromhex(r["key"]): r["size"] for r in listing["blocks"]}
    lost, wrong = read_all(served.data_url, listed)
    assert wrong == [], f"blocks served with wrong payloads after a SIGKILL: {wrong[:4]}"
    missing, wrong = read_all(served.data_url, acked)
    assert wrong == []
    return len(listed) - lost, missing


def kill_mid_storm(served, name: str, rng: random.Random) -> Storm:
    storm = Storm(served.data_url, name).start()
    deadline = time.monotonic() + 10
    while len(storm.acked) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the storm, not at a fixed point
    assert served.stop(signal.SIGKILL) == -signal.SIGKILL
    storm.join()
    assert storm.bad == [], f"blocks served wrong before the kill: {storm.bad[:4]}"
    return storm


def test_durable_mode_survives_sigkills_and_loses_no_acknowledged_put(serve_factory):
    served = serve_factory(flash_sync=True, dram_gb=0.002, flash_gb=0.2)  # 2 MiB DRAM: evictions too
    rng = random.Random(8)
    acked: dict[bytes, int] = {}
    for kill in range(4):
        storm = kill_mid_storm(served, f"durable{kill}", rng)
        acked |= storm.acked
        served.start()  # it starts again on the same folder
        stats = httpx.get(served.rest_url + "/v1/stats").json()
        assert stats["durable"] and stats["flash_status"]["state"] == "ok"
        verified, missing = check_after_restart(served, acked)
        assert missing == 0, f"kill {kill}: {missing} of {len(acked)} acknowledged blocks lost"
        assert verified >= len(acked)
        print(f"kill {kill}: {len(acked)} acknowledged blocks, {verified} served and verified, 0 lost")
    assert len(acked) >= 4 * 40


def test_default_mode_serves_only_whole_blocks_after_sigkills(serve_factory):
    served = serve_factory(dram_gb=0.002, flash_gb=0.2)  # evictions demote to flash mid-storm
    rng = random.Random(9)
    for kill in range(2):
        kill_mid_storm(served, f"default{kill}", rng)
        served.start()
        verified, _ = check_after_restart(served, {})
        assert verified > 0  # what DRAM had pushed to flash survived
