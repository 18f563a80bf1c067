"""Pin a system prompt: prefill it once, keep its pages in the engine's pool for good, and
pin its blocks in the cache service, so every request that starts with it (on this
replica or any other) prefills only what follows."""

from __future__ import annotations

import logging

from engine.errors import InvalidRequestError
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams

log = logging.getLogger(__name__)


def system_prompt_tokens(engine: LLMEngine, text: str) -> list[int]:
    """The tokens a chat starting with this system prompt begins with (the template renders
    a lone system message as an exact prefix of any conversation that opens with it)."""
    if engine.tokenizer is None:
        raise InvalidRequestError("this model has no tokenizer to render a system prompt with")
    return engine.tokenizer.apply_chat_template([{"role": "system", "content": text}],
                                                add_generation_prompt=False)


def pin_system_prompt(engine: LLMEngine, text: str, tier: str | None = None) -> dict:
    """Prefill ``text`` as a system prompt, hold its pages, pin its blocks in the service
    (``tier``: the service's top tier by default). Returns what was done, for the log."""
    ids = system_prompt_tokens(engine, text)
    keys = engine.hasher().keys(ids)
    if not keys:
        raise InvalidRequestError(f"the system prompt has {len(ids)} tokens: no full block to pin "
                                  f"(blocks are {engine.config.block_size} tokens)")
    engine.generate([ids], SamplingParams(temperature=0, max_tokens=1))
    held = engine.hold_prefix(ids)
    pinned = 0
    if engine.connector is not None:
        if not engine.connector.flush(30):
            log.warning("pin: the cache service did not take the system prompt's blocks in 30 s")
        pinned = engine.connector.client.pin(keys, tier)
    return {"tokens": len(ids), "blocks": len(keys), "held_locally": held, "pinned_in_service": pinned,
            "first_key": keys[0].hex()}
