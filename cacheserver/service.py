"""The running service: store, data-plane server and REST server, started and stopped
together.

Signals are handled here, in the main thread: SIGTERM or SIGINT stops the listeners, lets
the data plane finish what is in flight, stops the REST server, then persists the store
(volatile blocks copied to flash, LMDB synced) and closes it. Both are blocked in every
other thread (a thread inherits the mask of the one that starts it), so they reach the
main thread, whose wait they cut short: a stop begins the moment one arrives. uvicorn runs
in a thread of its own so its signal handling stays out of the way.
"""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn

from cacheserver.config import ServeConfig
from cacheserver.dataplane import DataPlane, Limits
from cacheserver.dataserver import DataServer, tcp_listener, unix_listener
from cacheserver.faults import Faults
from cacheserver.memory import keep_freed_buffers
from cacheserver.rest import create_app
from cacheserver.tiers_from_config import build_store

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Service:
    def __init__(self, config: ServeConfig):
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # before any thread starts: see run
        self.config = config
        keep_freed_buffers()
        built = build_store(config)
        self.store = built.store
        self.flash_problem = built.flash_problem
        faults = Faults(delay_s=config.inject_delay_ms / 1000, garbage_rate=config.inject_garbage)
        self.plane = DataPlane(self.store, Limits(config.max_frame_bytes, config.max_batch), faults)
        listeners = []
        if config.data_port:
            listeners.append(tcp_listener(config.host, config.data_port))
        if config.unix_socket:
            listeners.append(unix_listener(config.unix_socket))
        self.data_server = DataServer(self.plane, listeners)
        app = create_app(self.store, config, self.plane.counters, self.flash_problem)
        self.rest = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port,
                                                  log_config=None, lifespan="off"))
        self._rest_thread = threading.Thread(target=self.rest.run, name="kvtier-rest", daemon=True)
        self._stop = threading.Event()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, lambda *_: self._stop.set())
        self.data_server.start()
        self._rest_thread.start()
        # Every thread is started: only this one takes the signals now (one that came
        # meanwhile is taken here), so each interrupts the wait below at once.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self._announce()
        while not self._stop.wait(0.5):
            if not self._rest_thread.is_alive():
                log.error("the REST server stopped on its own (is port %d free?)", self.config.port)
                self.shutdown()
                return 1
        self.shutdown()
        return 0

    def _announce(self) -> None:
        c = self.config
        print(f"kvtier serve: REST admin API on http://{c.host}:{c.port} (docs at /docs)", flush=True)
        if c.data_port:
            print(f"kvtier serve: data plane on kvtier://{c.host}:{c.data_port}", flush=True)
        if c.unix_socket:
            shared = "; its clients map the DRAM tier (shared memory)" if "dram" in self.plane.slabs else ""
            shared += ", and the HBM tier on the same GPU (CUDA IPC)" if "hbm" in self.plane.slabs else ""
            print(f"kvtier serve: data plane on unix://{c.unix_socket}{shared}", flush=True)
        print(f"kvtier serve: tiers {self.store.tier_names}, {len(self.store)} blocks from flash", flush=True)
        if self.store.remote is not None:
            print(f"kvtier serve: remote tier {self.store.remote.stats()['urls']} (written behind)",
                  flush=True)
        if c.flash_sync and not self.flash_problem:
            print("kvtier serve: durable mode: every put is written through to flash and synced", flush=True)
        if self.flash_problem:
            print(f"kvtier serve: DEGRADED: {self.flash_problem}", flush=True)
            if c.flash_sync:
                print("kvtier serve: durable mode without flash: every put is refused (NOT_DURABLE)",
                      flush=True)
        if c.inject_delay_ms:
            print(f"kvtier serve: TESTING: every data-plane request is delayed {c.inject_delay_ms} ms",
                  flush=True)
        if c.inject_garbage:
            print(f"kvtier serve: TESTING: {c.inject_garbage:.0%} of data-plane replies are replaced by "
                  "garbage (corrupted frames)", flush=True)

    def shutdown(self) -> None:
        log.info("kvtier serve: stopping")
        self.data_server.stop()
        self.rest.should_exit = True
        self._rest_thread.join(10)
        self.store.close(persist=True)
        print("kvtier serve: stopped; store persisted", flush=True)
