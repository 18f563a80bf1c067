"""A ``kvtier`` command prints what the user asked for: the libraries' per-request INFO
lines (httpx's ``HTTP Request: ...``) stay off the terminal unless ``--log-level debug``.
Each command is a real ``kvtier`` process against a real ``kvtier serve``."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def kvtier(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], check=False, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_admin_stats_prints_no_request_lines_at_the_default_level(served):
    done = kvtier("admin", "--url", served.rest_url, "stats")
    assert done.returncode == 0, done.stderr
    assert "hit rate" in done.stdout
    assert done.stderr == ""


def test_debug_level_shows_the_request_lines(served):
    done = kvtier("--log-level", "debug", "admin", "--url", served.rest_url, "stats")
    assert done.returncode == 0, done.stderr
    assert "httpx: HTTP Request: GET " + served.rest_url + "/v1/stats" in done.stderr


def test_unknown_log_level_is_a_clear_error():
    done = kvtier("--log-level", "loud", "admin", "stats")
    assert done.returncode == 2
    assert "--log-level must be DEBUG, INFO, WARNING or ERROR, got 'loud'" in done.stderr
