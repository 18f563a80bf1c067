"""The whole stack as a user runs it: a real ``kvtier up`` (cache service, two SmolLM2
replicas, router) on free loopback ports, driven with the official ``openai`` package."""

from __future__ import annotations

import math
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.engine.up_process import SMALL, SYSTEM, ask, kvtier_up, pids_of

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with kvtier_up(tmp_path_factory.mktemp("stack"), "--replicas", "2", *SMALL) as up:
        yield up.url, up.replicas, up.data


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_and_a_chat_completion(client):
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
    reply = ask(client, [SYSTEM, {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_completion_matches_the_plain_one(client):
    messages = [SYSTEM, {"role": "user", "content": "What is the capital of Italy?"}]
    plain = ask(client, messages).choices[0].message.content
    chunks = list(ask(client, messages, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


def test_second_turn_reports_cached_tokens_and_tenants_are_separate(client):
    turn1 = [SYSTEM, {"role": "user", "content": "What is the capital of Japan?"}]
    first = ask(client, turn1)
    turn2 = [*turn1, {"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "And of Spain?"}]
    second = ask(client, turn2)
    assert second.usage.prompt_tokens_details.cached_tokens > 0
    # The same conversation from another tenant: nothing of tenant A's is served to B.
    other = ask(client, turn2, salt="tenant-b")
    assert other.usage.prompt_tokens_details.cached_tokens == 0


def test_conversations_stick_and_spread_within_the_bound(stack, client):
    url = stack[0]
    before = {r["url"]: r["requests"] for r in httpx.get(url + "/v1/router/stats").json()["replicas"]}
    conversations = [[{"role": "system", "content": f"You are assistant number {i}."},
                      {"role": "user", "content": "Say hi."}] for i in range(24)]
    with ThreadPoolExecutor(24) as pool:  # all in flight at once: the load bound applies
        list(pool.map(lambda m: ask(client, m, max_completion_tokens=2), conversations))
    stats = httpx.get(url + "/v1/router/stats").json()["replicas"]
    served = {r["url"]: r["requests"] - before[r["url"]] for r in stats}
    assert sum(served.values()) == 24
    assert min(served.values()) >= 4  # both replicas take a share
    assert max(r["peak_in_flight"] for r in stats) <= math.ceil(1.25 * 24 / 2)
    # A later turn of one conversation goes to the replica that served its first turn.
    sticky = [*conversations[0], {"role": "assistant", "content": "Hi!"},
              {"role": "user", "content": "Again."}]
    first_owner = {r["url"]: r["requests"] for r in httpx.get(url + "/v1/router/stats").json()["replicas"]}
    ask(client, sticky)
    ask(client, [*sticky, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "More."}])
    after = {r["url"]: r["requests"] for r in httpx.get(url + "/v1/router/stats").json()["replicas"]}
    assert sorted(after[u] - first_owner[u] for u in after) == [0, 2]


def test_a_killed_replicas_conversations_keep_being_answered(stack, client):
    url, replicas, _ = stack
    conversations = [[SYSTEM, {"role": "user", "content": f"Capital of country number {i}?"}]
                     for i in range(8)]
    victim = replicas[1]

    def served_by_victim() -> int:
        stats = httpx.get(url + "/v1/router/stats").json()["replicas"]
        return next(r["requests"] for r in stats if r["url"] == victim)

    owned = []  # the conversations the victim served
    for m in conversations:
        before = served_by_victim()
        ask(client, m, max_completion_tokens=1)
        if served_by_victim() > before:
            owned.append(m)
    assert owned  # the victim owns some of these conversations
    for pid in pids_of(b"engine", int(victim.rsplit(":", 1)[1])):
        os.kill(pid, signal.SIGKILL)
    # The victim's conversations first, so the router meets the dead replica on a request
    # rather than on its next health check (every 2 s), which would leave nothing to retry.
    for m in owned + [m for m in conversations if m not in owned]:  # every one answered
        assert ask(client, m, max_completion_tokens=1).choices[0].message.content is not None
    stats = httpx.get(url + "/v1/router/stats").json()
    dead = next(r for r in stats["replicas"] if r["url"] == victim)
    assert dead["failures"] >= 1  # out of the ring
    # retried on the survivor, unless a health check came in the milliseconds before the first ask
    assert stats["retries"] >= 1 or dead["last_error"].startswith("healthz")
