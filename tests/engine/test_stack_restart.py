"""``Stack.restart``: which children ``kvtier up`` starts again when they die, and how often."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine.stack as stack_module
from engine.stack import Child, Stack, StackConfig


@pytest.fixture
def launches(monkeypatch) -> list[list[str]]:
    started: list[list[str]] = []
    monkeypatch.setattr(stack_module, "_launch", lambda log, args, append=False: started.append(args))
    return started


def child(name: str) -> Child:
    return Child(name, "http://127.0.0.1:1", None, Path("unused.log"), [name, "--port", "1"])


def test_the_cache_service_and_replicas_are_restarted_with_their_arguments(launches):
    stack = Stack(StackConfig())
    cache, replica, router = child("cache"), child("engine1"), child("router")
    assert stack.restart(cache) and stack.restart(replica)
    assert launches == [["cache", "--port", "1"], ["engine1", "--port", "1"]]
    assert not stack.restart(router)  # the router is the stack's front door: it stops the stack


def test_a_child_dying_over_and_over_stops_the_stack(launches):
    stack = Stack(StackConfig())
    cache = child("cache")
    assert [stack.restart(cache) for _ in range(4)] == [True, True, True, False]
