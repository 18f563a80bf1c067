"""Whether a sequence is done after its latest token, and its final text."""

from __future__ import annotations

from engine.model.tokenizer import Tokenizer
from engine.runtime.sequence import Sequence


def find_stop_string(text: str, stops: tuple[str, ...]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def check_stop(
    seq: Sequence, tokenizer: Tokenizer | None, eos_token_ids: frozenset[int], max_seq_len: int
) -> tuple[str, str] | None:
    """``(finish_reason, text)`` if ``seq`` is done, else None.

    ``stop`` for an end-of-sequence token, a stop token or a stop string (the text ends
    before it); ``length`` at ``max_tokens`` or the longest sequence the engine holds.
    Before ``min_tokens`` only the length stops it (the sampler masks the end tokens).
    """
    params = seq.params
    last = seq.token_ids[-1]
    if seq.num_output_tokens < params.min_tokens:
        return _length(seq, max_seq_len, tokenizer)
    if (last in eos_token_ids and not params.ignore_eos) or last in params.stop_token_ids:
        return "stop", _text(seq, tokenizer)
    if params.stop and tokenizer is not None:
        text = _text(seq, tokenizer)
        cut = find_stop_string(text, params.stop)
        if cut is not None:
            return "stop", text[:cut]
    return _length(seq, max_seq_len, tokenizer)


def _length(seq: Sequence, max_seq_len: int, tokenizer: Tokenizer | None) -> tuple[str, str] | None:
    if seq.num_output_tokens >= seq.params.max_tokens or seq.num_tokens >= max_seq_len:
        return "length", _text(seq, tokenizer)
    return None


def _text(seq: Sequence, tokenizer: Tokenizer | None) -> str:
    return tokenizer.decode(seq.output_token_ids) if tokenizer is not None else ""
