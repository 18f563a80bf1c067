"""OpenAI's logprobs objects from the engine's per-token ``{token id: logprob}`` dicts.

The engine gives, per generated token, the chosen token's log-probability and the top
``k`` (one dict; the chosen token may be among the top). Chat completions want
``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``; text
completions the legacy ``{tokens, token_logprobs, top_logprobs: [{token: logprob}],
text_offset}``. A streamed answer sends each token's entry once, in the chunk that carries
(or follows) its text, so the chunks' entries concatenate to the plain answer's.
"""

from __future__ import annotations

import functools
from typing import Any

from engine.model.tokenizer import Tokenizer


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what byte-level BPE vocabularies are spelled in): the
    printable character that stands for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = printable + [256 + i for i in range(len(others))]
    return {chr(c): b for b, c in zip(printable + others, chars, strict=True)}


class LogprobShaper:
    def __init__(self, tokenizer: Tokenizer | None, num_top: int):
        self.tokenizer = tokenizer
        self.num_top = num_top
        self._ids: list[int] = []  # legacy shape: the tokens shaped so far, for text_offset

    def token(self, token_id: int) -> tuple[str, bytes]:
        """A token's text and bytes. Its bytes come from its byte-level spelling where the
        vocabulary has one (a token may be part of a character), else from its text. A
        token that is not whole UTF-8 is named ``bytes:\\xNN...`` as OpenAI does; a special
        token by its name; a token of a model without a tokenizer ``token_id:N`` (vLLM's)."""
        if self.tokenizer is None:
            text = f"token_id:{token_id}"
            return text, text.encode()
        spelling = self.tokenizer.token_text(token_id)
        text = self.tokenizer.decode([token_id]) or spelling
        alphabet = _byte_level_alphabet()
        if not spelling or any(c not in alphabet for c in spelling):
            return text, text.encode()
        raw = bytes(alphabet[c] for c in spelling)
        try:
            return raw.decode(), raw
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw

    def _top(self, entry: dict[int, float]) -> list[tuple[int, float]]:
        return sorted(entry.items(), key=lambda kv: -kv[1])[: self.num_top]

    def _item(self, token_id: int, logprob: float) -> dict[str, Any]:
        text, raw = self.token(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    def chat(self, token_ids: list[int], entries: list[dict[int, float]]) -> dict[str, Any]:
        content = [self._item(t, e[t]) | {"top_logprobs": [self._item(i, lp) for i, lp in self._top(e)]}
                   for t, e in zip(token_ids, entries, strict=True)]
        return {"content": content, "refusal": None}

    def completion(self, token_ids: list[int], entries: list[dict[int, float]]) -> dict[str, Any]:
        offsets = []
        for t in token_ids:  # where each token's text starts in the completion's text
            offsets.append(len(self.tokenizer.decode(self._ids)) if self.tokenizer and self._ids else 0)
            self._ids.append(t)
        return {"tokens": [self.token(t)[0] for t in token_ids],
                "token_logprobs": [e[t] for t, e in zip(token_ids, entries, strict=True)],
                "top_logprobs": [{self.token(i)[0]: lp for i, lp in self._top(e)} for e in entries],
                "text_offset": offsets}
