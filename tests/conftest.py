"""Fixtures every test package may use: a real ``kvtier serve`` subprocess on free
loopback ports, in a temp folder.

``serve_factory(**settings)`` starts one (settings as ``kvtier serve`` flags with ``_``,
e.g. ``dram_gb=0.001``) and returns a ``Served`` with its URLs; ``served.stop()`` sends
SIGTERM and waits (the exit status is kept), ``served.restart()`` starts it again on the
same ports and folder. Every server still running is stopped at the end of the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Served:
    folder: Path
    settings: dict
    port: int = field(default_factory=free_port)
    data_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    exit_code: int | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_url(self) -> str:
        return f"kvtier://127.0.0.1:{self.data_port}"

    @property
    def unix_path(self) -> str:
        return str(self.folder / "kvtier.sock")

    @property
    def unix_url(self) -> str:
        return f"unix://{self.unix_path}"

    def start(self) -> Served:
        args = {"port": self.port, "data_port": self.data_port, "unix_socket": self.unix_path,
                "flash_dir": str(self.folder / "flash"), "dram_gb": 0.01, "flash_gb": 0.05, **self.settings}
        cmd = [sys.executable, "-m", "clients.cli", "--log-level", "WARNING", "serve"]
        for name, value in args.items():
            cmd += [f"--{name.replace('_', '-')}", str(value)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KVTIER_")}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.proc.stdout.read()
                raise RuntimeError(f"kvtier serve exited with {self.proc.returncode}:\n{output}")
            try:
                healthy = httpx.get(self.rest_url + "/healthz", timeout=1).status_code == 200
                if healthy and os.path.exists(self.unix_path):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("kvtier serve did not become ready")

    def stop(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.exit_code = self.proc.returncode
            self.output = self.proc.stdout.read()
        self.proc = None
        return self.exit_code

    def restart(self) -> Served:
        self.stop()
        return self.start()


def _servers(base: Path):
    started: list[Served] = []

    def start(**settings) -> Served:
        folder = base / f"server{len(started)}"
        folder.mkdir()
        served = Served(folder, settings).start()
        started.append(served)
        return served

    return start, started


@pytest.fixture
def serve_factory(tmp_path):
    start, started = _servers(tmp_path)
    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    """One server shared by a test module (10 MiB DRAM, 50 MiB flash, admin token
    ``secret``): tests that use it must not depend on what the others stored."""
    start, started = _servers(tmp_path_factory.mktemp("served"))
    yield start(admin_token="secret")
    for s in started:
        s.stop()


@pytest.fixture
def served(serve_factory) -> Served:
    """One server of its own for a test (10 MiB DRAM, 50 MiB flash, no admin token)."""
    return serve_factory()
