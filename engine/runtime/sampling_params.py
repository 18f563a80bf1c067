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
    ``stop`` (the text is cut before it); none of these but the length stops it before
    ``min_tokens`` (the end tokens are masked until then). With ``logprobs`` the output
    carries, per token, the log-probabilities (of the raw logits, before any penalty,
    bias or temperature) of the chosen token and the top ``logprobs``.

    The logits are adjusted before the choice, in this order (as vLLM does): ``logit_bias``
    adds to the listed tokens' logits; ``repetition_penalty`` divides the positive logits
    (multiplies the negative ones) of every token in the prompt or the output;
    ``frequency_penalty`` is subtracted once per time a token occurs in the output, and
    ``presence_penalty`` once if it occurs at all (OpenAI's definitions).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    min_tokens: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # also return this many top log-probabilities per token
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)

    def __post_init__(self) -> None:
        # Accept lists (and a single string, and a {token: bias} dict) from callers; store tuples.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in bias))
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise InvalidRequestError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if not isinstance(self.min_tokens, int) or not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequestError(f"min_tokens must be in [0, max_tokens={self.max_tokens}], "
                                      f"got {self.min_tokens!r}")
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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(f"repetition_penalty must be > 0 (1: off), "
                                      f"got {self.repetition_penalty}")
        if any(not -100 <= b <= 100 for _, b in self.logit_bias):
            raise InvalidRequestError("logit_bias values must be in [-100, 100]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def adjusts_logits(self) -> bool:
        """Whether the sampler changes this request's logits before it picks."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1
                    or self.logit_bias or self.min_tokens)

    def check_vocab(self, vocab_size: int) -> None:
        """Refuse token ids outside the vocabulary (they would index past the logits)."""
        ids = [t for t, _ in self.logit_bias] + list(self.stop_token_ids)
        if any(not 0 <= t < vocab_size for t in ids):
            raise InvalidRequestError(f"logit_bias and stop_token_ids take token ids in [0, {vocab_size})")
