"""The rules both clients follow around every call, so no engine request ever fails on
the cache's account: the breaker decides whether to try, failures become the call's
fallback answer and a counter, and only connection errors are retried (with backoff).

A timeout is not retried: the engine has already waited as long as it wanted to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cacheserver.protocol import FrameError
from clients.breaker import CircuitBreaker
from clients.calls import ServerError
from clients.counters import ClientCounters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientOptions:
    timeout: float = 1.0  # seconds for one call, all its batches included
    connect_timeout: float = 0.5
    pool_size: int = 8  # idle connections kept
    retries: int = 2  # extra attempts after a connection error
    backoff: float = 0.02  # seconds before the first retry, doubled each time
    max_batch: int = 4096  # keys per request (the server's default limit)
    max_frame_bytes: int = 256 << 20  # request body bytes (the server's default limit)
    max_reply_bytes: int = 1 << 30  # a reply claiming more is garbage: refused, never allocated
    breaker_threshold: int = 5
    breaker_cooldown: float = 2.0
    shared_memory: bool = True  # on a unix:// URL, copy blocks out of the service's shared DRAM tier
    device: str | None = None  # an engine's GPU: open the service's HBM tier there if it is that GPU

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("client timeouts must be positive")
        if self.pool_size < 1 or self.retries < 0 or self.max_batch < 1:
            raise ValueError("pool_size and max_batch must be >= 1, retries >= 0")


class Guard:
    def __init__(self, options: ClientOptions):
        self.options = options
        self.counters = ClientCounters()
        self.breaker = CircuitBreaker(options.breaker_threshold, options.breaker_cooldown)

    def admit(self) -> bool:
        self.counters.calls += 1
        if self.breaker.allow():
            return True
        self.counters.short_circuits += 1
        self.counters.failures += 1
        return False

    def succeeded(self) -> None:
        self.breaker.record(True)

    def failed(self, error: Exception, attempt: int) -> float | None:
        """Count a failed attempt; seconds to wait before retrying, or None to give up."""
        if isinstance(error, ServerError):
            # The service is up and answered: no reason to open the breaker.
            self.counters.server_errors += 1
            self.counters.failures += 1
            log.debug("cache service refused a call: %s", error)
            return None
        if isinstance(error, TimeoutError):
            self.counters.timeouts += 1
        elif isinstance(error, OSError | FrameError):
            self.counters.connection_errors += 1
            if attempt < self.options.retries and not isinstance(error, FrameError):
                self.counters.retries += 1
                return self.options.backoff * 2**attempt
        else:
            raise error  # a bug, not the service's failure: let it show
        self.breaker.record(False)
        self.counters.failures += 1
        log.debug("cache call failed (%s); answering with the fallback", error)
        return None
