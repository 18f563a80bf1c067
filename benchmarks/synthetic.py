"""Seeded synthetic workloads, named ``synthetic:NAME`` on the command line.

Every workload is a list of ``Request`` s (arrival time, prefix-block ids) drawn from a
``random.Random(seed)``: the same seed and size give the same trace in every process.
Ids come from ``PrefixIds``, which names a block by its parent and its content, so the same
content after the same prefix gets the same id and anything else gets a new one, exactly
like the store's chained keys.

- ``system-prompts``: single-turn requests; a shared system prompt (Zipf popularity,
  2-16 blocks) then a unique user part.
- ``chat``: multi-turn sessions; each turn re-sends the whole history plus the last answer
  and a new question, after a think time. Turns and think times follow the Mooncake
  conversation trace (``benchmarks.conversations``): each session's chance of ending after
  a turn is drawn from Beta(3.24, 1.08), so the chance of another turn grows with the
  turns so far (0.25 after the first, 0.49 after the third), 1.5 turns on average; think
  times are log-normal, median 132 s.
- ``chat-memoryless``: the same sessions with nothing to learn from their past: every
  turn is the last with chance 1/4 (4 turns on average), think times exponential (mean
  60 s). How long a session has been idle is then the only sign of whether it will come
  back, which is the order LRU already evicts in: the worst case for any policy that
  tries to do better.
- ``rag``: a system prompt, then three documents from a shared pool (Zipf), then the
  question; prefixes are shared only as far as the leading documents agree.
- ``agent``: agent loops; a long tool-description prompt per agent type, then 5-40 steps a
  few seconds apart, each appending a tool result, so contexts grow long.
- ``mix``: all four at once, each at a quarter of the rate, in one id space.
- ``tenant-chat``: multi-tenant chat; ``chat-memoryless`` sessions, each under one of
  ``tenants`` tenants (Zipf popularity), every tenant with its own system prompt of
  ``TENANT_PROMPT_BLOCKS`` blocks, salted so no two tenants share a block; answers are
  50-500 tokens. Block ``TENANT_PROMPT_BLOCKS`` of a request, the first of its first user
  turn, names its conversation: the router's key.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from benchmarks.conversations import mean_turns
from benchmarks.traces import Request

DEFAULT_REQUESTS = 4000
_SESSION_RATE = 1.0  # requests per second
TENANT_PROMPT_BLOCKS = 4  # fixed, so the first user turn is always at this depth
DEFAULT_TENANTS = 100


@dataclass
class PrefixIds:
    """Prefix-block ids: ``child(parent, content)`` is the same id for the same pair.

    The dict makes naming O(1); ``fresh`` content (a unique user message) skips it.
    """

    _ids: dict[tuple[int, Hashable], int] = field(default_factory=dict)
    _next: itertools.count = field(default_factory=itertools.count)

    def child(self, parent: int, content: Hashable) -> int:
        key = (parent, content)
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = next(self._next)
        return i

    def fresh(self) -> int:
        return next(self._next)

    def chain(self, parent_ids: list[int], contents: list[Hashable]) -> list[int]:
        """``parent_ids`` extended by one block per content."""
        out = list(parent_ids)
        for c in contents:
            out.append(self.child(out[-1] if out else -1, c))
        return out

    def extend_fresh(self, parent_ids: list[int], n: int) -> list[int]:
        return [*parent_ids, *(self.fresh() for _ in range(n))]


def zipf_sampler(rng: random.Random, n: int, alpha: float = 1.0) -> Callable[[], int]:
    """Draws 0..n-1 with probability proportional to 1/(rank+1)**alpha."""
    weights = list(itertools.accumulate(1 / (r + 1) ** alpha for r in range(n)))
    return lambda: rng.choices(range(n), cum_weights=weights)[0]


def _prompts(ids: PrefixIds, rng: random.Random, tag: str, n: int, sizes: tuple[int, int]) -> list[list[int]]:
    """``n`` shared prompts of ``sizes`` (min, max) blocks each."""
    return [ids.chain([], [(tag, p, b) for b in range(rng.randint(*sizes))]) for p in range(n)]


def system_prompts(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE) -> list[Request]:
    prompts = _prompts(ids, rng, "sys", 200, (2, 16))
    pick, t, out = zipf_sampler(rng, len(prompts)), 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(Request(int(t * 1000), tuple(ids.extend_fresh(prompts[pick()], rng.randint(1, 8)))))
    return out


@dataclass(frozen=True)
class Sessions:
    """How a chat session goes on: ``end_chance(rng)`` is drawn once per session (its
    chance of ending after each turn) and ``think_s(rng)`` before each next turn;
    ``mean_turns`` sets how often sessions start, so requests arrive at the given rate."""

    end_chance: Callable[[random.Random], float]
    think_s: Callable[[random.Random], float]
    mean_turns: float


CHAT_END_BETA = (3.24, 1.08)  # python -m benchmarks.conversations (the Mooncake trace)
CHAT_THINK_MEDIAN_S, CHAT_THINK_SIGMA = 132.0, 0.98
FITTED_SESSIONS = Sessions(
    end_chance=lambda rng: rng.betavariate(*CHAT_END_BETA),
    think_s=lambda rng: rng.lognormvariate(math.log(CHAT_THINK_MEDIAN_S), CHAT_THINK_SIGMA),
    mean_turns=mean_turns(CHAT_END_BETA),
)
MEMORYLESS_SESSIONS = Sessions(end_chance=lambda rng: 0.25, think_s=lambda rng: rng.expovariate(1 / 60),
                               mean_turns=4.0)


def _sessions(rng: random.Random, n: int, ids: PrefixIds, rate: float, sessions: Sessions, *,
              first_blocks: Callable[[], list[int]], answer_tokens: bool = False) -> list[Request]:
    """Chat sessions, each starting from ``first_blocks()`` (its system prompt); every
    turn appends 1-4 fresh blocks (the last answer and a new question)."""
    start, out = 0.0, []
    while len(out) < n:
        start += rng.expovariate(rate / sessions.mean_turns)
        end, history, t = sessions.end_chance(rng), first_blocks(), start
        while True:
            history = ids.extend_fresh(history, rng.randint(1, 4))
            out.append(Request(int(t * 1000), tuple(history), rng.randint(50, 500) if answer_tokens else 0))
            if rng.random() < end or len(out) >= n:
                break
            t += sessions.think_s(rng)
    return _by_time(out)


def chat(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE,
         sessions: Sessions = FITTED_SESSIONS) -> list[Request]:
    prompts = _prompts(ids, rng, "chat-sys", 20, (1, 4))
    pick = zipf_sampler(rng, len(prompts))
    return _sessions(rng, n, ids, rate, sessions, first_blocks=lambda: prompts[pick()])


def chat_memoryless(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE) -> list[Request]:
    return chat(rng, n, ids, rate, MEMORYLESS_SESSIONS)


def rag(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE) -> list[Request]:
    prompts = _prompts(ids, rng, "rag-sys", 4, (2, 4))
    sizes = [rng.randint(2, 8) for _ in range(2000)]
    pick_doc, t, out = zipf_sampler(rng, len(sizes), 0.9), 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        blocks = list(prompts[rng.randrange(len(prompts))])
        for doc in sorted({pick_doc() for _ in range(3)}):  # retrieved, in a stable order
            blocks = ids.chain(blocks, [("doc", doc, b) for b in range(sizes[doc])])
        out.append(Request(int(t * 1000), tuple(ids.extend_fresh(blocks, 1))))
    return out


def agent(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE) -> list[Request]:
    prompts = _prompts(ids, rng, "tools", 3, (16, 32))
    start, out = 0.0, []
    while len(out) < n:
        steps = rng.randint(5, 40)
        start += rng.expovariate(rate / steps)
        context, t = prompts[rng.randrange(len(prompts))], start
        for _ in range(min(steps, n - len(out))):
            context = ids.extend_fresh(context, rng.randint(1, 6))  # tool call + its result
            out.append(Request(int(t * 1000), tuple(context)))
            t += rng.uniform(1.0, 10.0)
    return _by_time(out)


def mix(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE) -> list[Request]:
    parts = [g(rng, n // 4, ids, rate / 4) for g in (system_prompts, chat, rag, agent)]
    return _by_time([r for p in parts for r in p])


def tenant_chat(rng: random.Random, n: int, ids: PrefixIds, rate: float = _SESSION_RATE,
                tenants: int = DEFAULT_TENANTS) -> list[Request]:
    if tenants < 1:
        raise ValueError(f"tenant-chat needs at least one tenant, got {tenants}")
    prompts = [ids.chain([], [("tenant", t, b) for b in range(TENANT_PROMPT_BLOCKS)]) for t in range(tenants)]
    pick = zipf_sampler(rng, tenants)
    return _sessions(rng, n, ids, rate, MEMORYLESS_SESSIONS, first_blocks=lambda: prompts[pick()],
                     answer_tokens=True)


def _by_time(requests: list[Request]) -> list[Request]:
    return sorted(requests, key=lambda r: r.timestamp_ms)  # stable: a session keeps its order


WORKLOADS: dict[str, Callable[[random.Random, int, PrefixIds], list[Request]]] = {
    "system-prompts": system_prompts,
    "chat": chat,
    "chat-memoryless": chat_memoryless,
    "rag": rag,
    "agent": agent,
    "mix": mix,
    "tenant-chat": tenant_chat,
}


def generate(name: str, seed: int = 0, num_requests: int = DEFAULT_REQUESTS) -> list[Request]:
    """The workload ``name`` with ``num_requests`` requests, deterministic for ``seed``."""
    if name not in WORKLOADS:
        raise ValueError(f"synthetic workload {name!r} is unknown; choose one of {sorted(WORKLOADS)}")
    return WORKLOADS[name](random.Random(seed), num_requests, PrefixIds())
