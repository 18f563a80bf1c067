"""The model's tokenizer and chat template, from GGUF metadata or a Hugging Face folder.

GGUF files of ``gpt2``-style (byte-level BPE) vocabularies are rebuilt with the
``tokenizers`` package: vocabulary and merges from ``tokenizer.ggml.*``, the
pre-tokenizer from ``tokenizer.ggml.pre``, control tokens as special tokens (they are
matched whole in text, e.g. ``<|im_start|>`` from the chat template, and dropped when
decoding). End of sequence is any of the EOS, end-of-turn and end-of-message tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UnsupportedModelError
from engine.model.chat_template import ChatTemplateError, render_chat

_CONTROL, _USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _byte_level() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_byte_level() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


def _split_then_byte_level(pattern: str) -> Callable[[], Any]:
    def build() -> Any:
        from tokenizers import Regex, pre_tokenizers

        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        return pre_tokenizers.Sequence([split, byte_level])

    return build


# tokenizer.ggml.pre -> pre-tokenizer (llama.cpp's names); anything else: GPT-2's regex
PRE_TOKENIZERS = {
    "smollm": _digits_then_byte_level,
    "starcoder": _digits_then_byte_level,
    "refact": _digits_then_byte_level,
    "llama-bpe": _split_then_byte_level(_LLAMA3_SPLIT),
    "qwen2": _split_then_byte_level(_QWEN2_SPLIT),
    "gpt2": _byte_level,
    "default": _byte_level,
}


@dataclass(frozen=True)
class Tokenizer:
    """Text <-> token ids, plus the model's special tokens and chat template.

    Immutable; the ``tokenizers`` backend is thread-safe for encoding and decoding.
    """

    backend: Any  # tokenizers.Tokenizer
    bos_token_id: int | None
    eos_token_ids: frozenset[int]
    add_bos: bool
    chat_template: str | None

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> Tokenizer:
        """Build from the ``tokenizer.*`` fields of a GGUF file (``gpt2`` BPE only)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise UnsupportedModelError(
                f"GGUF tokenizer {kind!r} is not supported; the engine reads byte-level BPE "
                "('gpt2') vocabularies"
            )
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as Backend

        tokens = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        backend = Backend(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
        pre = meta.get("tokenizer.ggml.pre", "default")
        backend.pre_tokenizer = PRE_TOKENIZERS.get(pre, _byte_level)()
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types, strict=True)
             if k == _CONTROL]
        )
        backend.add_tokens(
            [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types, strict=True)
             if k == _USER_DEFINED]
        )
        ends = {meta.get(f"tokenizer.ggml.{n}_token_id") for n in ("eos", "eot", "eom")}
        return cls(
            backend=backend,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=frozenset(i for i in ends if i is not None),
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=meta.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_hf_folder(cls, path: Path) -> Tokenizer | None:
        """Build from ``tokenizer.json`` (+ ``tokenizer_config.json``); None if there is none."""
        if not (path / "tokenizer.json").is_file():
            return None
        from tokenizers import Tokenizer as Backend

        backend = Backend.from_file(str(path / "tokenizer.json"))
        cfg = _read_json(path / "tokenizer_config.json")
        gen = _read_json(path / "generation_config.json")
        def token_id(name: str) -> int | None:  # a folder may name no BOS (or EOS) token
            text = _token_text(cfg.get(name))
            return backend.token_to_id(text) if text is not None else None

        eos = gen.get("eos_token_id", token_id("eos_token"))
        eos_ids = eos if isinstance(eos, list) else [eos]
        bos = token_id("bos_token")
        return cls(
            backend=backend,
            bos_token_id=bos,
            eos_token_ids=frozenset(i for i in eos_ids if i is not None),
            add_bos=bool(cfg.get("add_bos_token", False)) and bos is not None,
            chat_template=cfg.get("chat_template"),
        )

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; a BOS token first if the model wants one (or ``add_bos``)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        wants_bos = self.add_bos if add_bos is None else add_bos
        if wants_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``, special tokens left out."""
        return self.backend.decode(ids, skip_special_tokens=True)

    def token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.backend.id_to_token(token_id) or "")

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the chat ``messages`` rendered with the model's template."""
        if not self.chat_template:
            raise ChatTemplateError("this model has no chat template; send a plain prompt")
        eos = min(self.eos_token_ids) if self.eos_token_ids else None
        text = render_chat(
            self.chat_template,
            messages,
            add_generation_prompt,
            bos_token=self.token_text(self.bos_token_id),
            eos_token=self.token_text(eos),
        )
        return self.encode(text)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token
