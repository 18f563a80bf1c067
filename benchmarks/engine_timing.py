"""Timing helpers shared by the engine benchmarks (CPU and GPU): medians, rates, FLOPs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], Any] = lambda: None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run; ``sync``
    waits for a device's queued work before and after each run."""
    fn()
    return statistics.median(timed(sync, fn) for _ in range(repeats))


def timed(sync: Callable[[], Any], fn: Callable[[], Any]) -> float:
    """Seconds of one ``fn()``, with ``sync()`` (waiting for a device) before and after."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def random_ids(n: int, seed: int, vocab: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab, (n,), generator=g).tolist()


def matmul_rate(dtype: Any, repeats: int, n: int = 2048, device: str = "cpu",
                sync: Callable[[], Any] = lambda: None) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype`` on ``device``."""
    import torch

    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    return 2 * n**3 / median_time(lambda: a @ b, repeats, sync)


def prefill_flops(cfg: Any, tokens: int) -> float:
    """Projections for every token, causal attention, and one row of logits."""
    d, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = d * (q + 2 * kv) + q * d + 3 * d * cfg.intermediate_size
    linear = 2 * tokens * cfg.num_layers * per_layer
    attention = 4 * cfg.num_layers * q * tokens * (tokens + 1) / 2
    return linear + attention + 2 * d * cfg.vocab_size


def take_turns(systems: dict[str, Any], method: str, arg: Any, repeats: int) -> dict[str, float]:
    """Median of ``repeats`` runs of ``system.method(arg)`` per system, the systems taking
    turns run by run (after one warm-up round), so a noisy neighbour hurts them alike."""
    values: dict[str, list[float]] = {name: [] for name in systems}
    for round_ in range(repeats + 1):
        for name, system in systems.items():
            value = getattr(system, method)(arg)
            if round_:
                values[name].append(value)
    return {name: statistics.median(v) for name, v in values.items()}
