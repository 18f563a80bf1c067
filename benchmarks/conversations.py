"""Conversations in a prefix trace: which request is whose next turn, and the session model
fitted to them.

A request's previous turn is the latest earlier request whose blocks it extends: its
blocks are a prefix of this request's, and they share more than the first block (the
first is a system prompt that many conversations share). The fit gives the two numbers a
chat generator needs:

- **Turns.** Each conversation has its own chance ``p`` of ending after a turn, drawn from
  ``Beta(a, b)`` (maximum likelihood over the trace's turns). Then the chance of another
  turn after ``k`` turns is ``1 - a / (a + b + k - 1)``: it grows with the turns so far,
  as it does in real traffic, where a geometric number of turns (one fixed ``p``) would
  keep it flat.
- **Think times** between a turn and the next: log-normal, by the mean and deviation of
  the log gaps.

``python -m benchmarks.conversations [TRACE]`` prints the fit; the synthetic ``chat``
workload uses the one from the Mooncake conversation trace.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks.traces import Request


@dataclass(frozen=True)
class Turn:
    previous: int | None  # index of the request this one continues; None for a first turn
    number: int  # 1 for a first turn


@dataclass(frozen=True)
class SessionFit:
    end_beta: tuple[float, float]  # each conversation's chance of ending after a turn ~ Beta(a, b)
    think_median_s: float  # log-normal think times: exp(mean log gap)
    think_sigma: float  # their log deviation
    continue_by_turn: dict[int, float]  # observed share of k-turn conversations that went on
    num_conversations: int
    num_requests: int

    @property
    def mean_turns(self) -> float:
        return mean_turns(self.end_beta)


def end_chance(a, b, k):
    """The chance that a conversation with ``k`` turns so far ends now, when each
    conversation's own chance is drawn from ``Beta(a, b)``; numbers or numpy arrays."""
    return a / (a + b + k - 1)


def mean_turns(end_beta: tuple[float, float]) -> float:
    """Turns per conversation on average, ``E[1/p]`` for ``p ~ Beta(a, b)``."""
    a, b = end_beta
    return (a + b - 1) / (a - 1) if a > 1 else math.inf


def turns(requests: Sequence[Request]) -> list[Turn]:
    """Each request's previous turn and turn number, in trace order."""
    latest: dict[tuple[int, ...], int] = {}  # a request's blocks -> the latest request with them
    out: list[Turn] = []
    for i, r in enumerate(requests):
        ids = r.block_ids
        previous = next((latest[ids[:k]] for k in range(len(ids), 1, -1) if ids[:k] in latest), None)
        out.append(Turn(previous, 1 if previous is None else out[previous].number + 1))
        if ids:
            latest[ids] = i
    return out


def fit(requests: Sequence[Request]) -> SessionFit:
    """The session model of ``requests`` (see the module docstring)."""
    chain = turns(requests)
    went_on = {t.previous for t in chain if t.previous is not None}
    seen: dict[int, list[int]] = {}  # turn number -> [requests, of which continued]
    for i, t in enumerate(chain):
        counts = seen.setdefault(t.number, [0, 0])
        counts[0] += 1
        counts[1] += i in went_on
    if len(went_on) < 2:
        raise ValueError("the trace has fewer than two follow-up turns; there is nothing to fit")
    gaps = np.log([max(requests[i].timestamp_ms - requests[t.previous].timestamp_ms, 1) / 1000
                   for i, t in enumerate(chain) if t.previous is not None])
    return SessionFit(
        end_beta=_beta_geometric_mle(seen),
        think_median_s=float(np.exp(gaps.mean())),
        think_sigma=float(gaps.std()),
        continue_by_turn={k: c / n for k, (n, c) in sorted(seen.items())},
        num_conversations=sum(t.previous is None for t in chain),
        num_requests=len(requests),
    )


def _beta_geometric_mle(seen: dict[int, list[int]]) -> tuple[float, float]:
    """``(a, b)`` maximising the likelihood of the turns: a k-turn conversation ends with
    chance ``a / (a + b + k - 1)``. A grid search (a from 1.05 to 20, b from 0.02 to 20), then
    a finer one around the best point: deterministic, and quick for a few dozen turn counts."""
    numbers = sorted(seen)
    k = np.array(numbers, dtype=float)
    ended = np.array([seen[x][0] - seen[x][1] for x in numbers], dtype=float)
    went_on = np.array([seen[x][1] for x in numbers], dtype=float)
    a_lo, a_hi, b_lo, b_hi = 1.05, 20.0, 0.02, 20.0
    for _ in range(3):
        a = np.linspace(a_lo, a_hi, 200)[:, None, None]
        b = np.linspace(b_lo, b_hi, 200)[None, :, None]
        end = end_chance(a, b, k)
        ll = (ended * np.log(end) + went_on * np.log1p(-end)).sum(axis=2)
        i, j = np.unravel_index(np.argmax(ll), ll.shape)
        best_a, best_b = float(a[i, 0, 0]), float(b[0, j, 0])
        da, db = (a_hi - a_lo) / 20, (b_hi - b_lo) / 20
        a_lo, a_hi = max(1.0001, best_a - da), best_a + da
        b_lo, b_hi = max(1e-3, best_b - db), best_b + db
    return round(best_a, 2), round(best_b, 2)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.traces import DEFAULT_TRACE, load_jsonl

    args = sys.argv[1:] if argv is None else argv
    path = args[0] if args else DEFAULT_TRACE
    try:
        f = fit(load_jsonl(path))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    a, b = f.end_beta
    print(f"{path}: {f.num_requests} requests, {f.num_conversations} conversations")
    print(f"turns: end chance ~ Beta({a}, {b}); {f.mean_turns:.2f} turns on average")
    print("chance of another turn after k turns (observed / fitted):")
    for k, share in list(f.continue_by_turn.items())[:10]:
        print(f"  k={k}: {share:.3f} / {1 - end_chance(a, b, k):.3f}")
    print(f"think times: log-normal, median {f.think_median_s:.0f} s, sigma {f.think_sigma:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
