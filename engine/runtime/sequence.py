"""A request as the engine tracks it: its tokens, progress, pages and block keys."""

from __future__ import annotations

import enum

import torch

from engine.runtime.sampling_params import SamplingParams
from hashing.keys import BlockHasher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """One request. Owns its token list, block table and block keys.

    ``num_computed_tokens`` counts the leading tokens whose K/V are in its pages; the
    tokens after it still need a forward pass (the prompt, a chunk at a time, then one
    sampled token per step). The scheduler moves it between queues; the block manager
    fills its block table through ``append_blocks`` / ``release_blocks``.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        hasher: BlockHasher,
        device: str = "cpu",  # where its sampling generator draws (the logits' device)
    ):
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.hasher = hasher
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0  # prompt tokens served by the prefix cache on admission
        # Blocks the cache service supplied (key -> its tier), and on admission where the
        # cached tokens came from: {"local": n, "dram": n, "flash": n, ...}.
        self.imported: dict[bytes, str] = {}
        self.cache_sources: dict[str, int] = {}
        self.num_preemptions = 0
        self.block_table: list[int] = []
        self.finish_reason: str | None = None
        self.text = ""
        self.logprobs: list[dict[int, float]] = []  # per output token, if params.logprobs
        self._keys: list[bytes] = []
        self.generator = None
        if params.seed is not None:
            self.generator = torch.Generator(device).manual_seed(params.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_keys(self, num_blocks: int) -> list[bytes]:
        """Chained keys of the first ``num_blocks`` blocks (which must be full of tokens)."""
        bs = self.hasher.block_size
        if num_blocks * bs > self.num_tokens:
            raise AssertionError(f"bug: key of block {num_blocks - 1} asked before it is full")
        have = len(self._keys)
        if num_blocks > have:
            parent = self._keys[-1] if self._keys else None
            self._keys += self.hasher.keys(self.token_ids[have * bs : num_blocks * bs], parent, have)
        return self._keys[:num_blocks]

    def append_token(self, token_id: int, logprobs: dict[int, float] | None = None) -> None:
        self.token_ids.append(token_id)
        if logprobs is not None:
            self.logprobs.append(logprobs)

    def append_blocks(self, block_ids: list[int]) -> None:
        self.block_table.extend(block_ids)

    def release_blocks(self) -> list[int]:
        """Empty the block table; returns what it held."""
        blocks, self.block_table = self.block_table, []
        return blocks

    def set_computed(self, num_tokens: int) -> None:
        self.num_computed_tokens = num_tokens

    def admit(self, num_cached_tokens: int) -> None:
        """Start running with the first ``num_cached_tokens`` served by the prefix cache."""
        if self.num_preemptions == 0:
            self.num_cached_tokens = num_cached_tokens
            self.cache_sources = self._sources(num_cached_tokens)
        self.num_computed_tokens = num_cached_tokens
        self.status = SequenceStatus.RUNNING

    def _sources(self, num_cached_tokens: int) -> dict[str, int]:
        bs = self.hasher.block_size
        sources = {"local": num_cached_tokens}
        for key in self.block_keys(num_cached_tokens // bs) if self.imported else ():
            tier = self.imported.get(key)
            if tier is not None:
                sources[tier] = sources.get(tier, 0) + bs
                sources["local"] -= bs
        return sources

    def preempt(self) -> None:
        """Back to waiting; every token will be computed again."""
        self.num_computed_tokens = 0
        self.num_preemptions += 1
        self.status = SequenceStatus.WAITING

    def finish(self, reason: str, text: str) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.text = text
