"""The whole stack as child processes: cache service, engine replicas, router.

``Stack`` owns the children. It starts each as its own ``kvtier`` subcommand with its
output in a log file under the data folder, waits until every one answers its health
check (calling ``on_ready`` with each as it first does), and stops them in reverse order
(SIGTERM, then SIGKILL after a grace period). A child that dies while starting stops the
whole stack with the end of its log. One that dies later is started again with the same
arguments: a replica (the router sends its conversations elsewhere meanwhile) or the
cache service (same ports, same flash folder; the engines recompute meanwhile and
reconnect when it answers again).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from cacheserver.process import free_port


@dataclass(frozen=True)
class StackConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    data_dir: str = ".kvtier"
    model: str | None = None
    kv_cache_gb: float = 1.0
    device: str = "auto"  # every replica's (--device of kvtier engine)
    dram_gb: float = 2.0
    flash_gb: float = 8.0
    remote: str = ""  # the cache service's remote tier (kvtier serve --remote), if any
    pin_system_prompt: str | None = None  # a file each replica prefills and pins at start
    block_hash: str = "xxh3_128"
    hash_secret_file: str | None = None
    start_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"--replicas must be at least 1, got {self.replicas}")


@dataclass
class Child:
    name: str
    url: str  # what its health check and users reach
    process: subprocess.Popen
    log_path: Path
    args: list[str]
    restarts: list[float] = field(default_factory=list)  # monotonic times
    about: str = ""  # what else a user needs to know to reach it, for the ready line


@dataclass
class Stack:
    config: StackConfig
    children: list[Child] = field(default_factory=list)
    on_ready: Callable[[Child], None] = lambda child: None  # once per child, when it first answers

    def start(self) -> None:
        c = self.config
        logs = Path(c.data_dir) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        rest, data = free_port(c.host), free_port(c.host)
        serve = ["serve", "--host", c.host, "--port", str(rest), "--data-port", str(data),
                 "--flash-dir", str(Path(c.data_dir) / "flash"), "--dram-gb", str(c.dram_gb),
                 "--flash-gb", str(c.flash_gb)]
        if c.remote:
            serve += ["--remote", c.remote]
        # The replicas run on this host: they reach the cache service on its Unix socket,
        # and copy blocks out of its shared DRAM tier (TCP if the path is too long for one).
        sock = (Path(c.data_dir) / "cache.sock").resolve()
        if len(str(sock)) < _MAX_SOCKET_PATH:
            serve += ["--unix-socket", str(sock)]
            cache_url = f"unix://{sock}"
        else:
            cache_url = f"kvtier://{c.host}:{data}"
        cache = self._spawn("cache", f"http://{c.host}:{rest}", logs, serve, f"admin; data {cache_url}")
        self._wait_healthy([cache])
        replicas = []
        for i in range(c.replicas):
            port = free_port(c.host)
            args = ["engine", "--host", c.host, "--port", str(port), "--kv-cache-gb", str(c.kv_cache_gb),
                    "--device", c.device, "--cache-url", cache_url]
            if c.model:
                args += ["--model", c.model]
            if c.pin_system_prompt:
                args += ["--pin-system-prompt", str(Path(c.pin_system_prompt).resolve())]
            args += ["--block-hash", c.block_hash]
            if c.hash_secret_file:
                args += ["--hash-secret-file", str(Path(c.hash_secret_file).resolve())]
            replicas.append(self._spawn(f"engine{i}", f"http://{c.host}:{port}", logs, args, "replica"))
        self._wait_healthy(replicas)
        router_args = ["router", "--host", c.host, "--port", str(c.port)]
        for r in replicas:
            router_args += ["--replica", r.url]
        router = self._spawn("router", f"http://{c.host}:{c.port}", logs, router_args,
                             f"OpenAI-compatible API at http://{c.host}:{c.port}/v1")
        self._wait_healthy([router])

    def _spawn(self, name: str, url: str, logs: Path, args: list[str], about: str) -> Child:
        log_path = logs / f"{name}.log"
        child = Child(name, url, _launch(log_path, args), log_path, args, about=about)
        self.children.append(child)
        return child

    def restart(self, child: Child) -> bool:
        """Start a replica or the cache service that died again, with the same arguments;
        False when it has died ``_MAX_RESTARTS`` times within a minute, or is the router."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60]
        if _role(child) not in _MEANWHILE or len(child.restarts) >= _MAX_RESTARTS:
            return False
        child.restarts.append(now)
        child.process = _launch(child.log_path, child.args, append=True)
        return True

    def _wait_healthy(self, children: list[Child]) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        waiting = list(children)
        while waiting:
            for child in list(waiting):
                if child.process.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with status {child.process.returncode} while "
                                       f"starting; end of {child.log_path}:\n{tail(child.log_path)}")
                try:
                    if httpx.get(f"{child.url}/healthz", timeout=2).status_code == 200:
                        waiting.remove(child)
                        self.on_ready(child)
                except httpx.HTTPError:
                    pass
            if waiting and time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                raise RuntimeError(f"{names} did not become healthy in {self.config.start_timeout_s:.0f} s; "
                                   f"see the logs under {Path(self.config.data_dir) / 'logs'}")
            if waiting:
                time.sleep(0.25)

    def poll_exited(self) -> Child | None:
        """A child that has exited, if any."""
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM every child, last started first; SIGKILL what outlives the grace period."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        self.children.clear()


_MAX_RESTARTS = 3
_MAX_SOCKET_PATH = 100  # Linux allows 107 bytes in a Unix socket's path
# What the stack does while a child that is restarted is away, by role.
_MEANWHILE = {"engine": "the router sends its conversations elsewhere meanwhile",
              "cache": "the engines recompute meanwhile and reconnect when it is back"}


def _role(child: Child) -> str:
    return child.name.rstrip("0123456789")


def _launch(log_path: Path, args: list[str], append: bool = False) -> subprocess.Popen:
    with open(log_path, "ab" if append else "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "clients.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def ready_line(child: Child) -> str:
    """``  NAME     URL  ABOUT``: the line ``kvtier up`` prints when a child first answers."""
    return f"  {child.name:<8} {child.url}  {child.about}"


def run_until_signal(stack: Stack) -> int:
    """Start the stack, print where it is, and keep it up until SIGINT or SIGTERM."""
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.append(True))
    print(f"kvtier up: starting the cache service, {stack.config.replicas} engine(s) and the router",
          flush=True)
    stack.on_ready = lambda child: print(ready_line(child), flush=True)
    try:
        stack.start()
    except RuntimeError as e:
        print(f"kvtier up: {e}", file=sys.stderr)
        stack.stop()
        return 1
    c = stack.config
    print(f"kvtier up: ready; chat with: kvtier chat --url http://{c.host}:{c.port}   "
          f"(Ctrl-C stops the stack; logs under {Path(c.data_dir) / 'logs'})", flush=True)
    status = 0
    while not stopping:
        dead = stack.poll_exited()
        if dead is not None:
            code = dead.process.returncode
            if stack.restart(dead):
                print(f"kvtier up: {dead.name} exited with status {code}; restarting it "
                      f"({_MEANWHILE[_role(dead)]})", file=sys.stderr, flush=True)
                continue
            print(f"kvtier up: {dead.name} exited with status {code}; stopping.\n{tail(dead.log_path)}",
                  file=sys.stderr)
            status = 1
            break
        time.sleep(0.5)
    print("kvtier up: stopping ...", flush=True)
    stack.stop()
    return status

