"""Request traces for cache replay: each request is the run of prefix-block ids it reads.

The format is Mooncake's (FAST'25): one JSON object a line with ``timestamp`` (ms),
``input_length`` (tokens) and ``hash_ids``, remapped prefix-block ids: two requests share
their first k blocks exactly when their first k ids are equal. Only full blocks are
cacheable, so a request keeps its first ``input_length // block_tokens`` ids; the trailing
partial block is neither requested nor stored.

Replay needs store keys: id ``i`` becomes the 16-byte key ``i`` little-endian and its
parent is the previous id's key (``ROOT`` for the first block).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hashing.keys import KEY_SIZE

MOONCAKE_BLOCK_TOKENS = 512
# The folder CI and users reach as ../shared/data/traces/ from the repository root.
TRACES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
DEFAULT_TRACE = TRACES_DIR / "mooncake_conversation.jsonl"
ROOT = b"\xff" * KEY_SIZE  # parent of every first block; no id maps to it


@dataclass(frozen=True, slots=True)
class Request:
    """One request: its arrival time and the prefix-block ids of its full blocks."""

    timestamp_ms: int
    block_ids: tuple[int, ...]
    output_tokens: int = 0


def load_jsonl(path: str | Path, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> list[Request]:
    """The requests of a Mooncake-style JSONL trace, full blocks only.

    Raises ``ValueError`` naming the file and line when the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trace {path} not found; pass --trace FILE (Mooncake-style JSONL) "
                         f"or --trace synthetic:NAME")
    requests = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                full = row["input_length"] // block_tokens
                ids = tuple(int(i) for i in row["hash_ids"][:full])
                requests.append(Request(int(row["timestamp"]), ids, int(row.get("output_length", 0))))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a trace row ({e!r:.80})") from None
    return requests


def dump_jsonl(requests: Iterable[Request], path: str | Path, block_tokens: int) -> None:
    """Write requests in the same format (every block full), so ``load_jsonl`` reads them back."""
    with Path(path).open("w") as f:
        for r in requests:
            row = {"timestamp": r.timestamp_ms, "input_length": len(r.block_ids) * block_tokens,
                   "output_length": r.output_tokens, "hash_ids": list(r.block_ids)}
            f.write(json.dumps(row) + "\n")


def distinct_blocks(requests: Sequence[Request]) -> int:
    return len({i for r in requests for i in r.block_ids})


def requested_blocks(requests: Sequence[Request]) -> int:
    return sum(len(r.block_ids) for r in requests)


def unlimited_hit_rate(requests: Sequence[Request]) -> float:
    """Hit rate of a cache that never evicts: every block after its first use hits."""
    total = requested_blocks(requests)
    return (total - distinct_blocks(requests)) / total if total else 0.0


def block_key(block_id: int) -> bytes:
    return block_id.to_bytes(KEY_SIZE, "little")
