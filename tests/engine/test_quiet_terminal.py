"""What a user sees in the terminal: ``kvtier up`` prints one line per component as it
comes up, and ``kvtier chat`` prints the conversation and its token counts, nothing from
the libraries underneath (httpx logs every request at INFO)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.engine.up_process import REPO, SMALL, kvtier_up

pytestmark = pytest.mark.slow

USAGE = re.compile(r"^  \[(\d+) prompt tokens, (\d+) cached, (\d+) generated\]$")


def test_up_says_what_is_ready_where_and_chat_shows_only_the_conversation(tmp_path):
    with kvtier_up(tmp_path / "up", *SMALL) as up:
        components = [ln.split() for ln in up.startup if ln.startswith("  ")]
        assert [c[0] for c in components] == ["cache", "engine0", "router"], up.startup
        assert len(up.startup) == 5, up.startup  # starting, three components, ready
        cache, engine, router = (" ".join(c) for c in components)
        assert f"{up.cache} admin; data unix://" in cache
        assert engine.startswith(f"engine0 {up.replicas[0]} ")
        assert router == f"router {up.url} OpenAI-compatible API at {up.url}/v1"
        assert up.startup[-1].startswith(f"kvtier up: ready; chat with: kvtier chat --url {up.url} ")

        chat = subprocess.run(
            [sys.executable, "-m", "clients.cli", "chat", "--url", up.url, "--max-tokens", "8",
             "--temperature", "0"],
            input="What is the capital of France?\nAnd of Spain?\n", cwd=REPO, capture_output=True,
            text=True, timeout=300, check=False)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr == ""
    lines = chat.stdout.splitlines()
    assert lines[0] == f"kvtier chat with {up.url} (/reset: new conversation, Ctrl-D: quit)"
    usages = [USAGE.match(ln) for ln in lines if ln.startswith("  [")]
    assert len(usages) == 2 and all(usages), lines
    assert int(usages[1][2]) > 0  # the second turn's history came from the cache
    replies = [ln for ln in lines if "bot> " in ln]  # input() echoes no newline into a pipe
    assert len(replies) == 2 and all(ln.startswith("you> bot> ") for ln in replies), lines
    assert "INFO" not in chat.stdout and "httpx" not in chat.stdout
