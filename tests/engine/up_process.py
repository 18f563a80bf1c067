"""A real ``kvtier up`` for tests: started on a free loopback port in a temp folder, read
until it says it is ready, stopped with SIGTERM (and expected to exit 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cacheserver.process import free_port

REPO = Path(__file__).resolve().parents[2]
# Small tiers: the stack tests need little memory, and the machine is shared.
SMALL = ("--kv-cache-gb", "0.25", "--dram-gb", "0.25", "--flash-gb", "1")


@dataclass(frozen=True)
class Up:
    url: str  # the router
    replicas: list[str]  # each engine replica's URL
    cache: str  # the cache service's REST URL
    data: Path
    startup: list[str] = field(default_factory=list)  # what it printed up to "ready"


@contextmanager
def kvtier_up(data: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 240) -> Iterator[Up]:
    """``args`` are more ``kvtier up`` flags; ``env`` more environment variables (the cache
    service reads ``KVTIER_*`` settings from it, e.g. ``KVTIER_INJECT_DELAY_MS``)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clients.cli", "up", "--port", str(port), "--data-dir", str(data), *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})})
    lines: list[str] = []
    for line in _lines_until(proc, "chat with", timeout):
        lines.append(line)
    if proc.poll() is not None or not any("ready" in ln for ln in lines):
        proc.kill()
        pytest.fail("kvtier up did not start:\n" + "".join(lines) + proc.stdout.read())
    urls = {ln.split()[0]: ln.split()[1] for ln in lines if ln.startswith("  ") and "http" in ln}
    replicas = [url for name, url in urls.items() if name.startswith("engine")]
    try:
        yield Up(f"http://127.0.0.1:{port}", replicas, urls["cache"], data, lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(60) == 0, proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()


def _lines_until(proc: subprocess.Popen, marker: str, timeout: float) -> Iterator[str]:
    """The output lines up to the one holding ``marker`` (or until it exits or times out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            return
        yield line
        if marker in line:
            return


def pids_of(command: bytes, port: int) -> list[int]:
    """Processes running ``kvtier COMMAND`` with ``port`` among their arguments."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if command in argv and str(port).encode() in argv:
                pids.append(int(entry))
    return pids


SYSTEM = {"role": "system", "content": "You are a geography tutor. Answer in one short sentence, "
          "naming the country and its capital, and nothing else at all."}


def ask(client, messages, salt=None, **kw):
    """One greedy chat completion (8 tokens unless told) through the openai package."""
    extra = {"cache_salt": salt} if salt else None
    return client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=8,
                                          temperature=0, extra_body=extra, **kw)
