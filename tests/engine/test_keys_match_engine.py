"""``kvtier keys`` prints the keys a default engine gives the same prompt's blocks, so an
operator can find (and pin) a system prompt's blocks in the cache service's listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SYSTEM = "You are the support assistant of Acme Travel. Answer briefly and politely. " * 8


def keys_cli(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "clients.cli", "keys", *args], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.split()


def test_system_prompt_keys_are_the_engines(smollm_engines):
    engine = smollm_engines("auto")
    chat = engine.tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Where is my bag?"}])
    expected = [k.hex() for k in engine.hasher().keys(chat)]
    printed = keys_cli("--system-prompt", SYSTEM)
    assert len(printed) >= 4
    assert printed == expected[: len(printed)]  # the chat's leading blocks, key for key
    salted = keys_cli("--system-prompt", SYSTEM, "--salt", "tenant-a")
    assert salted == [k.hex() for k in engine.hasher("tenant-a").keys(chat)][: len(salted)]
