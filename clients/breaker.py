"""A circuit breaker: after repeated failures, fail fast for a while.

Closed: calls go through. After ``threshold`` failures in a row it opens: calls are
refused at once (the engine recomputes instead of waiting on a sick service) until
``cooldown`` seconds pass; then one trial call goes through (half-open), and its outcome
closes or reopens the breaker. Not locked: a race only lets an extra trial call through.
"""

from __future__ import annotations

import time


class CircuitBreaker:
    def __init__(self, threshold: int = 5, cooldown: float = 2.0, clock=time.monotonic):
        if threshold < 1 or cooldown < 0:
            raise ValueError("breaker threshold must be >= 1 and cooldown >= 0")
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0
        self.opened = 0  # times the breaker opened

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold and self._clock() < self._open_until

    def allow(self) -> bool:
        if self._failures < self.threshold:
            return True
        if self._clock() >= self._open_until:
            self._open_until = self._clock() + self.cooldown  # one trial per cooldown
            return True
        return False

    def record(self, ok: bool) -> None:
        if ok:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self.threshold:
            if self._failures == self.threshold:
                self.opened += 1
            self._open_until = self._clock() + self.cooldown
