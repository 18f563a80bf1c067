"""What a cache client counts, so engines, tests and benchmarks can see every fallback."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ClientCounters:
    calls: int = 0  # client method calls
    failures: int = 0  # calls answered with the fallback (a miss, 0) for any reason
    timeouts: int = 0
    connection_errors: int = 0  # refused, reset, closed
    server_errors: int = 0  # error replies (unknown block, store full, bad request)
    short_circuits: int = 0  # calls refused at once by the open breaker
    retries: int = 0
    connects: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    mapped_bytes: int = 0  # payload bytes copied straight out of the service's shared memory
    stale_blocks: int = 0  # shared-memory copies the service overwrote meanwhile (answered as misses)

    def as_dict(self) -> dict:
        return asdict(self)
