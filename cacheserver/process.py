"""A ``kvtier serve`` child process on free loopback ports: for benchmarks and tests that
need a real service they can stop, restart on the same folder, or kill."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _flag(name: str, value: object) -> list[str]:
    """``kvtier serve`` arguments for one setting; a bool is ``--name`` or ``--no-name``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", str(value)]


@dataclass
class ServiceProcess:
    """``settings`` are ``kvtier serve`` flags with ``_`` (``dram_gb=1``); the flash folder
    lives under ``folder`` and survives ``restart``."""

    folder: Path
    settings: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    data_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    output: str = ""  # its log, read when it stops
    exit_code: int | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_url(self) -> str:
        return f"kvtier://127.0.0.1:{self.data_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        return Path(self.folder) / "serve.log"

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        args = {"port": self.port, "data_port": self.data_port, "flash_dir": str(Path(self.folder) / "flash"),
                **self.settings}
        cmd = [sys.executable, "-m", "clients.cli", "--log-level", "WARNING", "serve"]
        for name, value in args.items():
            cmd += _flag(name, value)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVTIER_")}
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # a file, not a pipe nobody reads, which could fill
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=Path(__file__).resolve().parents[1])
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until the REST API answers and, when configured, the Unix socket exists."""
        socket_path = self.settings.get("unix_socket")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.log_path.read_text(errors="replace")[-4000:]
                raise RuntimeError(f"kvtier serve exited with {self.proc.returncode}:\n{output}")
            try:
                healthy = httpx.get(self.rest_url + "/healthz", timeout=1).status_code == 200
                if healthy and (not socket_path or os.path.exists(socket_path)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.03)
        self.stop()
        raise RuntimeError(f"kvtier serve did not become healthy in {timeout:.0f} s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop it (SIGTERM: a clean shutdown that persists DRAM to flash); its exit status."""
        if self.proc is None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self.output = self.log_path.read_text(errors="replace")
        self.proc = None
        return self.exit_code

    def restart(self) -> ServiceProcess:
        self.stop()
        return self.start()
