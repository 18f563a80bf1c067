"""Real ``redis-server`` processes on loopback ports, set up as a cache: one server, or a
Redis Cluster of primaries and replicas. For the remote tier's tests and benchmarks.

``redis-server`` comes from the system packages (the Makefile's install step adds it with
apt when it is missing; ``ensure_redis_server`` does the same when run as root).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.dataplane import ensure_redis_server

# A cache: no persistence, LRU over every key when full.
CACHE_SETTINGS = ["--save", "", "--appendonly", "no", "--maxmemory-policy", "allkeys-lru",
                  "--protected-mode", "no", "--bind", "127.0.0.1"]


def _free_port_pair() -> int:
    """A port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports for a cluster node")


@dataclass
class RedisServer:
    folder: Path
    port: int = field(default_factory=_free_port_pair)
    cluster: bool = False
    maxmemory_mb: int = 256
    extra: tuple[str, ...] = ()  # more redis-server flags (TLS, users)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [ensure_redis_server(), "--port", str(self.port), "--dir", str(self.folder),
               "--maxmemory", f"{self.maxmemory_mb}mb", *CACHE_SETTINGS]
        if self.cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                    "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
                    "--repl-diskless-sync-delay", "0"]
        cmd += self.extra
        with open(self.folder / f"redis-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: self.cli("PING") == "PONG", f"redis-server on port {self.port}")
        return self

    def cli(self, *args: str) -> str:
        """A redis-cli command's output ('' when it fails)."""
        done = subprocess.run([_redis_cli(), "-p", str(self.port), *args], capture_output=True, text=True,
                              timeout=10, check=False)
        return done.stdout.strip()

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-run, as a crashed host would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class RedisCluster:
    """``primaries`` primaries and as many replicas each as ``replicas``."""

    folder: Path
    primaries: int = 3
    replicas: int = 1
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> RedisCluster:
        count = self.primaries * (1 + self.replicas)
        self.nodes = [RedisServer(self.folder / f"node{i}", cluster=True).start() for i in range(count)]
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        done = subprocess.run([_redis_cli(), "--cluster", "create", *addresses, "--cluster-replicas",
                               str(self.replicas), "--cluster-yes"], capture_output=True, text=True,
                              timeout=60, check=False)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
        _wait(self.healthy, "the Redis Cluster", timeout=30)
        return self

    def healthy(self) -> bool:
        """Every live node sees the cluster as ok, and every live replica is in sync (a
        replica that never synced cannot take over from its primary)."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        if not all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in live):
            return False
        roles = [n.cli("INFO", "replication") for n in live]
        return all("master_link_status:up" in r for r in roles if "role:slave" in r)

    def wait_replicated(self, timeout: float = 10.0) -> None:
        """Until every live replica has every write its primary took (before killing one)."""
        def synced() -> bool:
            for n in self.primary_nodes():
                info = dict(line.split(":", 1) for line in n.cli("INFO", "replication").splitlines()
                            if ":" in line)
                offsets = [part.split("=")[1] for k, v in info.items() if k.startswith("slave")
                           for part in v.split(",") if part.startswith("offset=")]
                if any(o != info["master_repl_offset"] for o in offsets):
                    return False
            return True

        _wait(synced, "replication", timeout)

    def primary_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if "role:master" in n.cli("INFO", "replication")]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def _redis_cli() -> str:
    return shutil.which("redis-cli") or str(Path(ensure_redis_server()).with_name("redis-cli"))


def _wait(check, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")
