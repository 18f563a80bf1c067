"""Which conversation a request belongs to: the router's key, from the request body alone.

The key is OpenAI's ``prompt_cache_key`` when the request has one. Otherwise it is the
conversation's stable prefix: the leading system (or developer) messages and the first
user turn, which every later turn of the same chat repeats verbatim; for
``/v1/completions``, the first ``PROMPT_PREFIX_CHARS`` characters of the prompt. The
tenant's ``cache_salt`` is part of it, so tenants with the same prompt may land apart
(their blocks never match anyway). Pure: no I/O, no state.
"""

from __future__ import annotations

import json
from typing import Any

PROMPT_PREFIX_CHARS = 2048


def routing_key(body: dict[str, Any]) -> str:
    salt = str(body.get("cache_salt") or "")
    explicit = body.get("prompt_cache_key")
    if explicit:
        return f"key:{salt}:{explicit}"
    messages = body.get("messages")
    if isinstance(messages, list):
        return f"chat:{salt}:" + json.dumps(_stable_prefix(messages), sort_keys=True, default=str)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):  # token ids, or a batch of prompts: the first one
        prompt = json.dumps(prompt[0] if prompt and isinstance(prompt[0], list | str) else prompt)
    return f"prompt:{salt}:" + str(prompt)[:PROMPT_PREFIX_CHARS]


def _stable_prefix(messages: list[Any]) -> list[Any]:
    """The leading system/developer messages and the first user message."""
    prefix = []
    for m in messages:
        role = m.get("role") if isinstance(m, dict) else None
        prefix.append([role, m.get("content") if isinstance(m, dict) else m])
        if role not in ("system", "developer"):
            break
    return prefix
