"""transformers on a checkpoint's own weight tensors: the reference beside our engine.

``transformers_model`` builds ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` on the meta device
and assigns the checkpoint's tensors as its parameters, so both systems read the very same
memory (an 8B shape is not held twice). ``ReferenceCache`` hides what changed between
transformers releases: the cache keyword (``past_key_values`` became ``cache``) and
``crop``'s argument.
"""

from __future__ import annotations

import argparse
import inspect
from typing import Any

import torch

from benchmarks.engine_timing import random_ids, timed
from engine.model.checkpoint import Checkpoint
from engine.model.shapes import hf_config_dict


def transformers_model(checkpoint: Checkpoint, attn_implementation: str = "sdpa") -> Any:
    """The transformers model of ``checkpoint`` (in eval mode) whose parameters ARE the
    checkpoint's tensors, on their device and in their dtype."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = hf_config_dict(checkpoint.config)
    config = AutoConfig.for_model(**cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    weights = dict(checkpoint.weights)
    embed = weights["model.embed_tokens.weight"]
    if checkpoint.config.tie_word_embeddings:
        weights["lm_head.weight"] = embed
    model.load_state_dict(weights, strict=True, assign=True)
    # The rotary frequencies are a buffer outside the state dict: compute them on the device.
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, attr = name.rpartition(".")
            with torch.device(embed.device):
                setattr(model.get_submodule(parent), attr, type(module)(config=model.config))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"bug: tensors left on the meta device: {left[:5]}")
    return model.eval()


def attention_implementation(model: Any) -> str:
    return model.config._attn_implementation


class ReferenceCache:
    """Forward passes of a transformers model through one KV cache, across releases."""

    def __init__(self, model: Any):
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache: Any = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, T] appended to the cache (a new one if there is none) -> last logits [B, V]."""
        out = self.model(ids, use_cache=True, **{self._cache_arg: self.cache}, **self._keep)
        self.cache = out[self._cache_arg] if self._cache_arg in out else out["past_key_values"]
        return out.logits[:, -1]

    def crop(self, length: int) -> None:
        """Keep the first ``length`` tokens of the cache. A negative argument removes that many
        tokens in every release (it was a length to keep, now it is a count to remove)."""
        remove = self.cache.get_seq_length() - length
        if remove > 0:
            self.cache.crop(-remove)


class Transformers:
    """The benchmark's reference system (``engine_gpu``): transformers' forward passes through
    its own KV cache, with the methods and figures of ``engine_gpu.Ours``."""

    def __init__(self, checkpoint: Checkpoint, args: argparse.Namespace, device: str, sync):
        self.model = transformers_model(checkpoint)
        self.new_cache = lambda: ReferenceCache(self.model)
        self.args, self.sync, self.device = args, sync, device
        self.vocab = checkpoint.config.vocab_size
        self.prefix = torch.tensor([random_ids(args.cached_prefix, 7, self.vocab)], device=device)
        self._prefix_cache: Any = None

    def _ids(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, device=self.device)

    def _forward_s(self, cache: ReferenceCache, ids: torch.Tensor) -> float:
        with torch.inference_mode():
            return timed(self.sync, lambda: cache.forward(ids))

    def prefill_s(self, n: int) -> float:
        return self._forward_s(self.new_cache(), self._ids([random_ids(n, n, self.vocab)]))

    def ttft_s(self, hit: bool) -> float:
        question = self._ids([random_ids(self.args.new_tokens, 100, self.vocab)])
        if not hit:
            return self._forward_s(self.new_cache(), torch.cat([self.prefix, question], dim=1))
        if self._prefix_cache is None:
            self._prefix_cache = self.new_cache()
            self._forward_s(self._prefix_cache, self.prefix)
        self._prefix_cache.crop(self.args.cached_prefix)
        return self._forward_s(self._prefix_cache, question)

    def decode_tps(self, batch: int) -> float:
        cache, steps = self.new_cache(), self.args.decode_steps
        rows = [random_ids(self.args.prompt_tokens, 5000 + i, self.vocab) for i in range(batch)]
        with torch.inference_mode():
            state = {"next": cache.forward(self._ids(rows)).argmax(-1, keepdim=True)}  # [B, 1]

            def decode() -> None:
                for _ in range(steps):
                    state["next"] = cache.forward(state["next"]).argmax(-1, keepdim=True)

            return batch * steps / timed(self.sync, decode)
