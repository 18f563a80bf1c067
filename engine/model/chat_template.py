"""Render a model's Jinja chat template the way Hugging Face ``apply_chat_template`` does."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any


class ChatTemplateError(ValueError):
    """The template raised (``raise_exception``) or the messages do not fit it."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


@lru_cache(maxsize=8)
def _compile(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat(
    source: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
    **special_tokens: str,
) -> str:
    """The prompt text of ``messages`` (``[{"role": ..., "content": ...}]``)."""
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatTemplateError(f"a chat message needs a role and content, got {m!r:.80}")
    return _compile(source).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens
    )
