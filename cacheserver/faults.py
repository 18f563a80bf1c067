"""Faults the data plane can inject on purpose, for testing only: they let a test (or an
operator rehearsing an incident) see that engines keep serving when the cache service is
slow. Off by default; ``kvtier serve --inject-delay-ms N`` turns the delay on."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Faults:
    delay_s: float = 0.0  # every request waits this long before it is handled

    @property
    def active(self) -> bool:
        return self.delay_s > 0

    def before_request(self) -> None:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
