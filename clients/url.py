"""Cache service addresses: ``kvtier://host:port`` (TCP) or ``unix:///path`` (same host)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_DATA_PORT = 8301


def service_url(setting: str | None) -> str:
    """The service an engine plugin (vLLM, SGLang) talks to: its own setting, else
    ``$KVTIER_URL``, else ``kvtier serve``'s default data port on this host."""
    return setting or os.environ.get("KVTIER_URL") or f"kvtier://127.0.0.1:{DEFAULT_DATA_PORT}"


@dataclass(frozen=True)
class Address:
    scheme: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.scheme == "unix" else f"kvtier://{self.host}:{self.port}"


def parse_url(url: str) -> Address:
    """``ValueError`` for anything but ``kvtier://host[:port]`` or ``unix:///path``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        path = parts.netloc + parts.path
        if not path:
            raise ValueError(f"{url!r} names no socket path; write unix:///path/to/socket")
        return Address("unix", path=path)
    if parts.scheme in ("kvtier", "tcp"):
        try:
            port = parts.port or DEFAULT_DATA_PORT
        except ValueError:
            raise ValueError(f"{url!r} has a bad port") from None
        if not parts.hostname:
            raise ValueError(f"{url!r} names no host; write kvtier://host:port")
        return Address("tcp", host=parts.hostname, port=port)
    raise ValueError(f"cache URL {url!r} is not kvtier://host:port or unix:///path")
