"""Faults the data plane can inject on purpose, for testing only: they let a test (or an
operator rehearsing an incident) see that engines keep serving when the cache service is
slow or answers garbage. Off by default; ``kvtier serve --inject-delay-ms N`` delays every
request, ``--inject-garbage RATE`` replaces that share of replies with corrupted frames.

A corrupted frame keeps its length (so the byte stream stays in step) and is one of:
random bytes as the body under an OK status, or a status no protocol version defines.
A client must treat either as a failed call (a miss), never as data.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

_UNDEFINED_STATUSES = range(64, 256)  # far above the protocol's statuses, so never one of them


@dataclass(frozen=True)
class Garbage:
    status: int
    count: int
    body: bytes


@dataclass(frozen=True)
class Faults:
    delay_s: float = 0.0  # every request waits this long before it is handled
    garbage_rate: float = 0.0  # this share of replies is replaced by a corrupted frame
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.delay_s < 0 or not 0 <= self.garbage_rate <= 1:
            raise ValueError(f"fault delay must be >= 0 and garbage rate 0-1, got {self.delay_s}, "
                             f"{self.garbage_rate}")

    def before_request(self) -> None:
        """Hold the request back when delays are on."""
        if self.delay_s > 0:
            time.sleep(self.delay_s)

    def garbage(self, status: int, count: int, body_len: int) -> Garbage | None:
        """A corrupted frame to send instead of a reply (``garbage_rate`` of the time), else None."""
        if self.garbage_rate <= 0 or self.rng.random() >= self.garbage_rate:
            return None
        noise = self.rng.randbytes(max(body_len, 16))
        if self.rng.random() < 0.5:
            return Garbage(status, count, noise)
        return Garbage(self.rng.choice(_UNDEFINED_STATUSES), count, noise[:64])
