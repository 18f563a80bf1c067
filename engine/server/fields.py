"""Which request fields the chat server serves, refuses, or accepts and ignores: one table.

A client must never believe it got what it asked for when it did not. Every field a
request sends is looked up in ``FIELDS``:

- **served**: it works as OpenAI documents it (or, for kvtier's and vLLM's own fields, as
  its note says);
- **refused**: a 400 in OpenAI's error shape naming the field, unless its value asks for
  nothing (``n=1``, ``response_format={"type": "text"}``, ``tools=[]``: its ``neutral``
  values) or is null;
- **ignored**: accepted on purpose because it cannot change the answer (``user``,
  ``metadata``, a latency hint).

A field that is not in the table is refused as unrecognised, as OpenAI does. The README's
and docs/engine.md's API sections are generated from this table, and a test fails if they
drift (tests/engine/test_openai_fields.py).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequestError

CHAT, COMPLETIONS = "chat", "completions"  # POST /v1/chat/completions, POST /v1/completions
BOTH = frozenset({CHAT, COMPLETIONS})


class Support(enum.Enum):
    SERVED = "served"
    REFUSED = "refused"
    IGNORED = "ignored"


@dataclass(frozen=True)
class FieldRule:
    support: Support
    note: str  # what it does here, or why it is refused or ignored
    routes: frozenset[str] = BOTH
    neutral: tuple[Any, ...] = ()  # refused fields: the values that ask for nothing


def _served(note: str, routes: frozenset[str] = BOTH) -> FieldRule:
    return FieldRule(Support.SERVED, note, routes)


def _refused(note: str, *neutral: Any, routes: frozenset[str] = BOTH) -> FieldRule:
    return FieldRule(Support.REFUSED, note, routes, neutral)


def _ignored(note: str, routes: frozenset[str] = BOTH) -> FieldRule:
    return FieldRule(Support.IGNORED, note, routes)


_CHAT, _COMPLETIONS = frozenset({CHAT}), frozenset({COMPLETIONS})

FIELDS: dict[str, FieldRule] = {
    # served: OpenAI's fields
    "model": _served("the served model's name (another name: 404 `model_not_found`)"),
    "messages": _served("text content (a string or text parts); roles system, developer, user, "
                        "assistant", _CHAT),
    "prompt": _served("a string, or a list of token ids", _COMPLETIONS),
    "max_tokens": _served("the most tokens to generate"),
    "max_completion_tokens": _served("the same as `max_tokens`", _CHAT),
    "temperature": _served("0 to 2; 0 is greedy"),
    "top_p": _served("nucleus sampling"),
    "seed": _served("the same tokens for the same seed, whatever the batch"),
    "stop": _served("stop strings; the text ends before the first"),
    "stream": _served("server-sent events in OpenAI's chunk format, ending with `data: [DONE]`"),
    "stream_options": _served("`include_usage` (`include_obfuscation` is ignored: no padding is sent)"),
    "logprobs": _served("chat: true for `choices[].logprobs.content`; completions: 0 to 5 top "
                        "log-probabilities in the legacy shape. Of the model's raw distribution, "
                        "before penalties and temperature"),
    "top_logprobs": _served("0 to 20 alternatives per token (needs `logprobs: true`)", _CHAT),
    "presence_penalty": _served("-2 to 2, subtracted from the logit of every token already in the output"),
    "frequency_penalty": _served("-2 to 2, subtracted once per occurrence in the output"),
    "logit_bias": _served("{token id: -100 to 100} added to those logits"),
    "prompt_cache_key": _served("the router's routing key: requests with the same key go to the "
                                "same replica"),
    # served: kvtier's and vLLM's own
    "top_k": _served("keep the k most likely tokens (0: off)"),
    "repetition_penalty": _served("vLLM's: > 0; logits of tokens in the prompt or output are divided "
                                  "by it (multiplied when negative)"),
    "min_tokens": _served("vLLM's: no end token or stop before this many tokens"),
    "cache_salt": _served("the tenant: requests with different salts never share a cached block"),
    # refused unless neutral
    "n": _refused("one choice per request; send n requests", 1),
    "best_of": _refused("one choice per request", 1, routes=_COMPLETIONS),
    "echo": _refused("the prompt is not echoed", False, routes=_COMPLETIONS),
    "suffix": _refused("no fill-in-the-middle", "", routes=_COMPLETIONS),
    "tools": _refused("no tool calling: the model would answer in plain text", [], routes=_CHAT),
    "tool_choice": _refused("no tool calling", "none", "auto", routes=_CHAT),
    "functions": _refused("no function calling", [], routes=_CHAT),
    "function_call": _refused("no function calling", "none", "auto", routes=_CHAT),
    "response_format": _refused("no constrained decoding (JSON mode or schema); only text",
                                {"type": "text"}, routes=_CHAT),
    "audio": _refused("text only", routes=_CHAT),
    "modalities": _refused("text only", ["text"], routes=_CHAT),
    "reasoning_effort": _refused("the served models do not reason", "none", routes=_CHAT),
    "verbosity": _refused("no verbosity control", routes=_CHAT),
    "web_search_options": _refused("no web search", routes=_CHAT),
    "moderation": _refused("no moderation model runs here", routes=_CHAT),
    "store": _refused("nothing is stored", False, routes=_CHAT),
    # accepted and ignored on purpose
    "user": _ignored("an end-user id for abuse monitoring; changes nothing in the answer"),
    "safety_identifier": _ignored("the same as `user`", _CHAT),
    "metadata": _ignored("tags for stored completions, and nothing is stored", _CHAT),
    "service_tier": _ignored("one tier here", _CHAT),
    "parallel_tool_calls": _ignored("only means something with `tools`, which are refused", _CHAT),
    "prediction": _ignored("a latency hint: the answer is the same without it", _CHAT),
    "prompt_cache_retention": _ignored("the cache keeps blocks by its own policy", _CHAT),
    "prompt_cache_options": _ignored("the cache keeps every full block by its own policy", _CHAT),
}


class FieldError(InvalidRequestError):
    """A request field the server cannot take as sent; ``param`` names it for the 400."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def check(route: str, sent: Mapping[str, Any]) -> None:
    """Raise ``FieldError`` for the first field of ``sent`` (the request's fields, as the
    client sent them) that ``route`` does not serve or ignore."""
    for name, value in sent.items():
        rule = FIELDS.get(name)
        if rule is None or route not in rule.routes:
            raise FieldError(name, f"unrecognized request argument supplied: {name}")
        if rule.support is Support.REFUSED and value is not None and value not in rule.neutral:
            raise FieldError(name, f"{name} is not supported by this server ({rule.note}); "
                               "leave it out")


def _names(route: str, support: Support) -> list[str]:
    return [n for n, r in FIELDS.items() if route in r.routes and r.support is support]


def summary_markdown() -> str:
    """The README's API section's table: each route's field names by support."""
    rows = ["| | `/v1/chat/completions` | `/v1/completions` |", "|---|---|---|"]
    labels = {Support.SERVED: "served", Support.REFUSED: "refused with a 400 naming the field",
              Support.IGNORED: "accepted and ignored"}
    for support, label in labels.items():
        cells = [", ".join(f"`{n}`" for n in _names(route, support)) or "none"
                 for route in (CHAT, COMPLETIONS)]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


def full_markdown() -> str:
    """docs/engine.md's table: every field, its routes, its support and why."""
    rows = ["| field | routes | support | note |", "|---|---|---|---|"]
    for name, rule in FIELDS.items():
        routes = "both" if rule.routes == BOTH else next(iter(rule.routes))
        support = rule.support.value
        if rule.neutral:
            support += " unless " + " or ".join(f"`{json.dumps(v)}`" for v in rule.neutral)
        rows.append(f"| `{name}` | {routes} | {support} | {rule.note} |")
    return "\n".join(rows) + "\n"


DOCS = {"README.md": summary_markdown, "docs/engine.md": full_markdown}  # where the tables live


def write_docs(repo: Path) -> None:
    """Rewrite the tables between the ``<!-- api-fields:start/end -->`` markers of the docs."""
    for name, render in DOCS.items():
        path = repo / name
        text = path.read_text()
        start, end = "<!-- api-fields:start -->\n", "<!-- api-fields:end -->"
        head, tail = text[: text.index(start) + len(start)], text[text.index(end) :]
        path.write_text(head + render() + tail)


if __name__ == "__main__":
    write_docs(Path(__file__).resolve().parents[2])
