"""What the engine reports about a request after a step."""

from __future__ import annotations

from dataclasses import dataclass

from engine.runtime.sequence import Sequence


@dataclass(frozen=True)
class RequestOutput:
    """A snapshot of one request: its tokens so far, and its text once it has finished.

    ``num_cached_tokens`` is how many prompt tokens the prefix cache served (OpenAI's
    ``usage.prompt_tokens_details.cached_tokens``), from the local pool or, through the
    cache connector, from the cache service (``cached_tokens_by_source``).
    """

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    num_cached_tokens: int
    logprobs: list[dict[int, float]] | None = None
    # Where the cached tokens came from: the local pool and the cache service's tiers.
    cached_tokens_by_source: dict[str, int] | None = None

    @classmethod
    def of(cls, seq: Sequence) -> RequestOutput:
        return cls(
            request_id=seq.request_id,
            prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
            token_ids=seq.output_token_ids,
            text=seq.text,
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            num_cached_tokens=seq.num_cached_tokens,
            logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
            cached_tokens_by_source=seq.cache_sources,
        )
