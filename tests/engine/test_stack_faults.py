"""Faults under a real ``kvtier up`` (cache service, two SmolLM2 replicas, router), driven
with the official ``openai`` package: the cache service SIGKILLed while conversations run,
slowed past the engines' cache timeout, and answering garbage. Every chat request
completes, with the text a stack without faults gives (greedy); the stack restarts the
killed service and the engines reconnect to it.

Each test prints its figures (faults injected, chat requests, failed); run with ``-s``.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx
import pytest

from clients.guard import ClientOptions
from tests.engine.up_process import SMALL, SYSTEM, ask, kvtier_up, pids_of

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow

COUNTRIES = ("France", "Japan", "Peru")


def connect(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def converse(up, country: str) -> list[str]:
    """One conversation: turn 1 on replica 0, the same turn on replica 1 (whose pool lacks
    it: it asks the cache service), turn 2 through the router. The three replies' texts."""
    turn1 = [SYSTEM, {"role": "user", "content": f"What is the capital of {country}?"}]
    first = ask(connect(up.replicas[0]), turn1).choices[0].message.content
    again = ask(connect(up.replicas[1]), turn1).choices[0].message.content
    turn2 = [*turn1, {"role": "assistant", "content": first},
             {"role": "user", "content": "And its largest city?"}]
    return [first, again, ask(connect(up.url), turn2).choices[0].message.content]


def service_stats(up) -> dict:
    return httpx.get(up.cache + "/v1/stats", timeout=10).json()


def by_source(reply) -> dict:
    return (reply.usage.prompt_tokens_details.model_extra or {}).get("cached_tokens_by_source", {})


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    with kvtier_up(tmp_path_factory.mktemp("clean"), "--replicas", "2", *SMALL) as up:
        yield up


@pytest.fixture(scope="module")
def reference(clean) -> list[str]:
    """The texts of ``converse`` without faults."""
    return [text for country in COUNTRIES for text in converse(clean, country)]


def test_a_killed_cache_service_is_restarted_and_the_engines_reconnect(clean, reference):
    port = int(clean.cache.rsplit(":", 1)[1])
    [old_pid] = pids_of(b"serve", port)
    client = connect(clean.url)
    conversations = [[SYSTEM, {"role": "user", "content": f"Capital of country number {i}?"}]
                     for i in range(12)]
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, client, m) for m in conversations]
        wait(futures, return_when=FIRST_COMPLETED)
        os.kill(old_pid, signal.SIGKILL)  # the rest run while it is dead or restarting
        replies = [f.result() for f in futures]  # raises if any request failed
    assert all(r.choices[0].message.content for r in replies)

    deadline = time.monotonic() + 60  # the stack notices within 0.5 s; the start takes seconds
    while not (pids_of(b"serve", port) and _healthy(clean.cache)):
        assert time.monotonic() < deadline, "the stack did not restart the cache service"
        time.sleep(0.25)
    assert pids_of(b"serve", port) != [old_pid]
    time.sleep(ClientOptions().breaker_cooldown + 0.5)  # a breaker opened by the outage closes

    # Blocks replica 0 saves to the new process are served to replica 1 from the service
    # (a system prompt neither replica has seen, so no block of it is in a local pool).
    fresh = [{"role": "system", "content": "You are a travel guide for Australia. Answer every question "
              "in one short sentence that names the city, and say nothing about anything else."},
             {"role": "user", "content": "What is the capital of Australia?"}]
    blocks = service_stats(clean)["blocks"]
    first = ask(connect(clean.replicas[0]), fresh)
    deadline = time.monotonic() + 30
    while service_stats(clean)["blocks"] == blocks:
        assert time.monotonic() < deadline, "replica 0 saved nothing to the restarted service"
        time.sleep(0.25)
    again = ask(connect(clean.replicas[1]), fresh)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert by_source(again).get("dram", 0) > 0
    assert again.choices[0].message.content == first.choices[0].message.content
    print(f"\nfaults: 1 SIGKILL of the cache service (restarted by the stack); chat requests "
          f"{len(replies) + 2}, failed 0; after the restart {by_source(again)['dram']} tokens came from "
          "the service's DRAM")


@pytest.mark.parametrize(("setting", "counter"), [
    ({"KVTIER_INJECT_DELAY_MS": "2500"}, "injected_delays"),  # past the engines' 2 s cache timeout
    ({"KVTIER_INJECT_GARBAGE": "0.5"}, "injected_garbage"),
], ids=["slow", "garbage"])
def test_a_slow_or_garbling_service_changes_no_answer(tmp_path, reference, setting, counter):
    with kvtier_up(tmp_path, "--replicas", "2", *SMALL, env=setting) as up:
        texts = [text for country in COUNTRIES for text in converse(up, country)]
        plane = service_stats(up)["data_plane"]
    assert texts == reference
    assert plane[counter] >= 1
    print(f"\nfaults: {plane[counter]} {counter.replace('_', ' ')} ({setting}); chat requests "
          f"{len(texts)}, failed 0, texts equal to a stack without faults")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
