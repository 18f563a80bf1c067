"""Turn an OpenAI-style chat log into a replayable trace, through the real tokenizer.

Input: JSONL, one request a line: ``{"messages": [{"role", "content"}, ...]}`` with an
optional ``timestamp`` (ms; the line number otherwise). Each request is rendered with the
model's chat template, tokenized, cut into ``block_tokens``-token blocks and keyed with the
store's own chained block keys (``hashing.keys``), so two requests share leading ids
exactly when they share leading full blocks. Keys become small ints in first-seen order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.traces import Request
from hashing.keys import BlockHasher, Namespace


def load_tokenizer(path: str | None = None) -> Any:
    """The engine's tokenizer: the default model's, a GGUF file's, or a HF folder's."""
    from engine.model.gguf_loader import open_gguf, read_metadata
    from engine.model.loader import default_model_path
    from engine.model.tokenizer import Tokenizer

    if path and Path(path).is_dir():
        tok = Tokenizer.from_hf_folder(Path(path))
        if tok is None:
            raise ValueError(f"{path} has no tokenizer.json")
        return tok
    gguf = Path(path) if path else default_model_path()
    return Tokenizer.from_gguf_metadata(read_metadata(open_gguf(gguf)))


def chat_tokens(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt tokens the engine would prefill for ``messages``."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)


def convert(rows: Iterable[dict], tokenizer: Any, block_tokens: int) -> list[Request]:
    hasher = BlockHasher(Namespace(), block_tokens)
    ids: dict[bytes, int] = {}
    out = []
    for n, row in enumerate(rows):
        tokens = chat_tokens(tokenizer, row["messages"])
        block_ids = tuple(ids.setdefault(k, len(ids)) for k in hasher.keys(tokens))
        out.append(Request(int(row.get("timestamp", n)), block_ids))
    return out


def load_chatlog(path: str | Path, tokenizer: Any, block_tokens: int) -> list[Request]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"chat log {path} not found")
    with path.open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
            raise ValueError(f"{path}:{n}: a chat-log line needs a 'messages' list")
    return convert(rows, tokenizer, block_tokens)
