"""``Stack.restart``: which children ``kvtier up`` starts again when they die, and how often.
The children here are real ``kvtier`` processes that finish at once (``kvtier keys``), so
what is checked is what was really started again, with which arguments, into which log."""

from __future__ import annotations

from engine.stack.supervisor import Child, Stack, StackConfig, _launch

QUICK = ["keys", "--tokens", "1,2,3,4", "--block-size", "2"]  # a kvtier command that exits at once


def child(name: str, tmp_path) -> Child:
    log = tmp_path / f"{name}.log"
    process = _launch(log, QUICK)
    process.wait()
    return Child(name, "http://127.0.0.1:1", process, log, QUICK)


def test_the_cache_service_and_replicas_are_restarted_with_their_arguments(tmp_path):
    stack = Stack(StackConfig())
    cache, replica, router = child("cache", tmp_path), child("engine1", tmp_path), child("router", tmp_path)
    first = cache.process
    assert stack.restart(cache) and stack.restart(replica)
    assert cache.process is not first and cache.process.wait() == 0 and replica.process.wait() == 0
    assert cache.process.args[-len(QUICK):] == QUICK
    # Two keys a run: the restart's output was appended to the first run's log.
    assert len(cache.log_path.read_text().split()) == 4
    assert not stack.restart(router)  # the router is the stack's front door: it stops the stack


def test_a_child_dying_over_and_over_stops_the_stack(tmp_path):
    stack = Stack(StackConfig())
    cache = child("cache", tmp_path)
    outcomes = []
    for _ in range(4):
        outcomes.append(stack.restart(cache))
        cache.process.wait()
    assert outcomes == [True, True, True, False]
