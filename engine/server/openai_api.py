"""OpenAI's request and response shapes for the chat server, and the translation of a
request into a prompt and ``SamplingParams``. Pure: no I/O."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.runtime.sampling_params import SamplingParams
from engine.server.fields import FieldError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool = False  # ignored: no obfuscation padding is sent


class _Common(BaseModel):
    """The fields both routes serve. Every other field lands in ``model_extra`` and is
    judged by ``fields.check`` against the one table (refused, or ignored on purpose)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    max_tokens: int | None = None
    min_tokens: int | None = Field(default=None, ge=0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    logit_bias: dict[str, float] | None = None
    cache_salt: str | None = None
    prompt_cache_key: str | None = None  # the router's concern: its routing key

    def sent_fields(self) -> dict[str, Any]:
        """The fields the client sent, by name (nulls included)."""
        return {name: getattr(self, name) for name in self.model_fields_set} | (self.model_extra or {})

    def num_logprobs(self) -> int | None:
        """How many top log-probabilities per token the answer carries (None: no logprobs)."""
        return None

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        max_tokens = self.max_tokens if self.max_tokens is not None else default_max_tokens
        return SamplingParams(
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens or 0,
            seed=self.seed,
            stop=tuple([self.stop] if isinstance(self.stop, str) else self.stop or ()),
            logprobs=self.num_logprobs(),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=self.repetition_penalty or 1.0,
            logit_bias=_token_bias(self.logit_bias or {}),
        )


def _token_bias(bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
    try:
        return tuple((int(token), value) for token, value in bias.items())
    except ValueError:
        raise FieldError("logit_bias", "logit_bias keys must be token ids (as strings)") from None


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise FieldError("messages", f"message content part of type {part.get('type')!r} is "
                                 "not supported; send text")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    def num_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs: true")
        return (self.top_logprobs or 0) if self.logprobs else None

    def sampling_params(self, default_max_tokens: int) -> SamplingParams:
        if self.max_completion_tokens is not None:
            return self.model_copy(update={"max_tokens": self.max_completion_tokens,
                                           "max_completion_tokens": None}).sampling_params(default_max_tokens)
        return super().sampling_params(default_max_tokens)

    def chat_messages(self) -> list[dict[str, str]]:
        # The template knows system/user/assistant; a developer message is a system one.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in self.messages]


class CompletionRequest(_Common):
    prompt: str | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=5)

    def num_logprobs(self) -> int | None:
        return self.logprobs


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int,
          by_source: dict[str, int] | None = None) -> dict[str, Any]:
    """OpenAI's usage object; ``prompt_tokens_details.cached_tokens_by_source`` (kvtier's
    own, beside OpenAI's fields) says which cached tokens came from the replica's pool and
    which from each tier of the cache service."""
    details: dict[str, Any] = {"cached_tokens": cached_tokens}
    if by_source:
        details["cached_tokens_by_source"] = {k: v for k, v in by_source.items() if v}
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": details,
    }


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish_reason: str | None, *,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def completion_chunk(rid: str, model: str, created: int, text: str, finish_reason: str | None, *,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def now() -> int:
    return int(time.time())
