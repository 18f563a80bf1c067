"""Per-request sampling settings, checked when the request is made."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidRequestError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    ``temperature`` 0 is greedy. ``top_k`` 0 and ``top_p`` 1 switch those filters off.
    With a ``seed`` a request samples the same tokens whatever it is batched with.
    Generation stops at ``max_tokens``, at an end-of-sequence token (unless
    ``ignore_eos``), at one of ``stop_token_ids``, or when the text contains one of
    ``stop`` (the text is cut before it). With ``logprobs`` the output carries, per token,
    the log-probabilities (of the raw logits) of the chosen token and the top ``logprobs``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # also return this many top log-probabilities per token

    def __post_init__(self) -> None:
        # Accept lists (and a single string) from callers; store tuples.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise InvalidRequestError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
