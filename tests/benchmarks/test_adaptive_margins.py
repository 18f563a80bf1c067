"""Hit-rate margins of ``adaptive``'s parts, on synthetic traces replayed through the store:
each part must be worth its cost where it was built to help. Slow (whole traces)."""

import pytest

from benchmarks.replay import TierSpec, replay, request_blocks
from benchmarks.synthetic import generate
from benchmarks.traces import distinct_blocks
from tiers.adaptive import AdaptivePolicy
from tiers.registry import POLICIES

pytestmark = pytest.mark.slow


def test_adaptive_races_the_hot_order_and_keeps_shared_prompts_when_sessions_thrash(monkeypatch):
    """chat-memoryless at 2% of distinct blocks: LRU lets the less popular system prompts
    go between their uses, and the multi-queue orders also protect the sessions' blocks,
    which give no sign of coming back; the hot order keeps only the prompts."""
    monkeypatch.setitem(POLICIES, "adaptive-without-hot", lambda: AdaptivePolicy(hot=False))
    requests = generate("chat-memoryless")
    tiers = [TierSpec("dram", distinct_blocks(requests) // 50)]
    blocks = request_blocks(requests, 1)
    rates = {p: replay(blocks, tiers, p)["hit_rate"] for p in ("lru", "adaptive-without-hot", "adaptive")}
    assert rates["adaptive"] > rates["adaptive-without-hot"] + 0.01 > rates["lru"] + 0.01


def test_adaptive_keeps_long_conversations_by_their_depth(monkeypatch):
    """chat at 5% of distinct blocks: a session that has gone on longer is likelier to
    come back, which per-block use counts see only for its oldest blocks."""
    monkeypatch.setitem(POLICIES, "adaptive-without-depth", lambda: AdaptivePolicy(depth=False))
    requests = generate("chat")
    tiers = [TierSpec("dram", distinct_blocks(requests) // 20)]
    blocks = request_blocks(requests, 1)
    rates = {p: replay(blocks, tiers, p)["hit_rate"] for p in ("lru", "adaptive-without-depth", "adaptive")}
    assert rates["adaptive"] > rates["adaptive-without-depth"] + 0.005
    assert rates["adaptive"] > rates["lru"] + 0.01
