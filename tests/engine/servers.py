"""Real ``kvtier engine`` and ``kvtier router`` processes for tests, on free loopback ports:
started, polled on ``/healthz`` until they answer, terminated on exit."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from cacheserver.process import free_port
from tests.engine.up_process import REPO


@contextmanager
def kvtier_process(command: str, args: list[str], log: Path, timeout: float = 120) -> Iterator[str]:
    """``kvtier COMMAND ARGS --port P``; yields its base URL once ``/healthz`` answers 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "clients.cli", command, *args, "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"kvtier {command} exited:\n{log.read_text()}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kvtier {command} did not come up:\n{log.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            finally:
                if proc.poll() is None:
                    proc.kill()
