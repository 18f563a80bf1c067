"""A reference for chat traffic: an online cache that knows the session model.

Belady's bound knows each request's future. An online policy knows only the past, and on
chat traffic the most it could know is the session model itself: how the chance of
another turn grows with the turns so far, and how think times are spread. This reference
is given that model, fitted to the same trace (``benchmarks.conversations.fit``), and each
request's place in its conversation (``benchmarks.conversations.turns``), and evicts
by it:

- A conversation's blocks are those its turns added beyond the blocks other
  conversations had already used (the shared system prompt), which are kept as long as
  anything else can go.
- When room is needed, the conversation least likely to still be going goes first,
  deepest blocks first: with ``k`` turns so far and idle for ``t`` seconds, that chance
  is ``q S(t) / (q S(t) + 1 - q)``, where ``q`` is the chance of another turn after
  ``k`` and ``S(t)`` the chance a think time is longer than ``t``.

It is not a bound: a fitted model can be wrong (on ``chat-memoryless``, whose think times
are exponential, the log-normal fit is the wrong model), and another policy can
do better. It shows how much knowing each conversation's turn count and the session
model is worth, where no store policy knows either. Capacity in blocks, the replay's
prefix semantics.

``python -m benchmarks.session_model [TRACE] [--capacity F ...]`` prints it beside LRU and
Belady; TRACE as in ``kvtier bench hitrate`` (default ``synthetic:chat``).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from benchmarks.belady import belady_hit_rate
from benchmarks.conversations import SessionFit, end_chance, fit, turns
from benchmarks.replay import TierSpec, replay, request_blocks
from benchmarks.traces import Request, distinct_blocks
from tiers.policy import resident_prefix


def still_going(model: SessionFit, turn: int, idle_s: float) -> float:
    """The chance that a conversation with ``turn`` turns so far, idle for ``idle_s``, has
    another turn to come."""
    q = 1 - end_chance(*model.end_beta, turn)
    if idle_s <= 0:
        return q
    z = (math.log(idle_s) - math.log(model.think_median_s)) / model.think_sigma
    longer = 0.5 * math.erfc(z / math.sqrt(2))  # a think time longer than idle_s
    return q * longer / (q * longer + 1 - q)


def session_model_hit_rate(requests: Sequence[Request], capacity_blocks: int,
                           model: SessionFit | None = None) -> float:
    """Prefix hit rate of a cache that evicts whole conversations by ``still_going``."""
    model = fit(requests) if model is None else model
    chain = turns(requests)
    session = [0] * len(requests)  # request -> its conversation (its first turn's index)
    seen: set[int] = set()
    resident: dict[int, int | None] = {}  # block -> its conversation, None for shared
    own: dict[int, list[int]] = {}  # conversation -> its resident blocks, shallow first
    state: dict[int, tuple[int, float]] = {}  # conversation -> (turns so far, last request s)
    hits = total = 0
    for n, (r, turn) in enumerate(zip(requests, chain, strict=True)):
        ids, now = r.block_ids, r.timestamp_ms / 1000
        s = session[n] = n if turn.previous is None else session[turn.previous]
        hits += resident_prefix(ids, resident)
        total += len(ids)
        for i in ids:
            if i in resident:
                continue
            mine = i not in seen or turn.previous is not None
            resident[i] = s if mine else None
            if mine:
                own.setdefault(s, []).append(i)
            seen.add(i)
        state[s] = (turn.number, now)
        if len(resident) > capacity_blocks:
            ranked = sorted((c for c in own if c != s and own[c]),
                            key=lambda c: still_going(model, state[c][0], now - state[c][1]))
            for c in [*ranked, s]:
                blocks = own[c]
                while blocks and len(resident) > capacity_blocks:
                    del resident[blocks.pop()]
            for i in [i for i, c in resident.items() if c is None][:len(resident) - capacity_blocks]:
                del resident[i]
    return hits / total if total else 0.0


def lru_hit_rate(requests: Sequence[Request], capacity_blocks: int) -> float:
    """The store's LRU, replayed as ``kvtier bench hitrate`` replays it."""
    return replay(request_blocks(requests, 1), [TierSpec("dram", capacity_blocks)], "lru")["hit_rate"]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.hitrate import load_trace

    parser = argparse.ArgumentParser(prog="python -m benchmarks.session_model",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("trace", nargs="?", default="synthetic:chat")
    parser.add_argument("--capacity", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    args = parser.parse_args(argv)
    try:
        trace = argparse.Namespace(trace=args.trace, seed=0, requests=None, block_tokens=None, tokenizer=None)
        requests = load_trace(trace)[0]
        model = fit(requests)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    distinct = distinct_blocks(requests)
    print(f"{args.trace}: {len(requests)} requests, {distinct} distinct blocks; session model "
          f"Beta{model.end_beta}, think median {model.think_median_s:.0f} s, sigma {model.think_sigma:.2f}")
    print("capacity   lru  session-model  belady   (hit rate %)")
    for f in args.capacity:
        cap = max(1, round(f * distinct))
        lru, informed = lru_hit_rate(requests, cap), session_model_hit_rate(requests, cap, model)
        print(f"{f:8} {100 * lru:5.1f}  {100 * informed:13.1f}  {100 * belady_hit_rate(requests, cap):6.1f}"
              f"   ({100 * (informed - lru):+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
