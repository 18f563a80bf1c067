"""The engine: requests in, tokens out, one batched forward pass per ``step``.

``LLMEngine`` ties the pieces together: the scheduler picks the step's chunks, the
model runner computes them into the paged KV pool, the sampler picks tokens, and the
stop rules finish requests. It is single-threaded: call ``add_request``, ``step`` and
``abort`` from one thread (a server runs the loop in one worker and hands it requests
through a queue).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace

import torch

from engine.config import EngineConfig
from engine.dtype import resolve_device, resolve_dtype
from engine.errors import EngineError, InvalidRequestError
from engine.model.checkpoint import Checkpoint
from engine.model.kv_cache import KVCache, PageLayout
from engine.model.loader import load_checkpoint
from engine.model.model import LlamaModel
from engine.runtime.block_manager import BlockManager
from engine.runtime.connector import CacheConnector, FetchResult, SavedBlock
from engine.runtime.model_runner import ModelRunner
from engine.runtime.outputs import RequestOutput
from engine.runtime.page_loader import Load, PageLoader
from engine.runtime.sampler import adjust_logits, sample
from engine.runtime.sampling_params import SamplingParams
from engine.runtime.scheduler import ScheduledChunk, Scheduler
from engine.runtime.sequence import Sequence
from engine.runtime.staging import StagingRing
from engine.runtime.stopping import check_stop
from hashing.keys import BlockHasher, Namespace

log = logging.getLogger(__name__)

Prompt = str | list[int]


@dataclass
class _Loading:
    """A request's fetched blocks being copied into the pages reserved for them."""

    seq: Sequence | None  # None once aborted
    keys: list[bytes]
    tiers: list[str]
    block_ids: list[int]
    load: Load


def _num_blocks(config: EngineConfig, layout: PageLayout) -> int:
    if config.num_blocks is not None:
        return config.num_blocks
    num = int(config.kv_cache_gb * 2**30) // layout.nbytes
    if num < 1:
        raise EngineError(f"kv_cache_gb={config.kv_cache_gb} holds no page of {layout.nbytes} bytes")
    return num


class LLMEngine:
    def __init__(
        self, config: EngineConfig, checkpoint: Checkpoint | None = None,
        connector: CacheConnector | None = None,
    ):
        """Load the model ``config.model`` names (or use ``checkpoint``) and size the KV pool.

        With a ``connector``, requests take the blocks after their local hit from the cache
        service before they are scheduled, and every block that fills is saved there.
        """
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        if checkpoint is None:
            checkpoint = load_checkpoint(config.model, self.dtype)
        m = checkpoint.config
        self.model_config = m
        self.tokenizer = checkpoint.tokenizer
        self.model_id = checkpoint.model_id
        layout = PageLayout(m.num_layers, config.block_size, m.num_kv_heads, m.head_dim, self.dtype)
        self.kv_layout = layout.name
        self.max_model_len = min(config.max_model_len or m.max_position, m.max_position)
        num_blocks = _num_blocks(config, layout)
        # A sequence longer than the pool could never run, even alone.
        self.max_seq_len = min(self.max_model_len, num_blocks * config.block_size)
        weights = {k: v.to(self.device, self.dtype) for k, v in checkpoint.weights.items()}
        self.model = LlamaModel(m, weights, self.max_model_len)
        del weights  # the model holds what it needs (fused copies of some)
        self.kv_cache = KVCache(layout, num_blocks, self.device)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.runner = ModelRunner(self.model, self.kv_cache, self.device,
                                  config.max_num_seqs if config.cuda_graphs else 0)
        self.eos_token_ids = self.tokenizer.eos_token_ids if self.tokenizer else frozenset()
        self._requests: dict[str, Sequence] = {}
        self.connector = connector
        # Host copies of filled pages on their way to the service: one slot per queued save.
        self._staging = StagingRing(connector.config.save_queue_blocks, layout.nbytes, self.device) \
            if connector is not None else None
        self._fetching: dict[str, Sequence] = {}  # requests waiting for their cached prefix
        self._loader = PageLoader(self.device)
        self._loads: list[_Loading] = []  # fetched blocks being copied into reserved pages, in order
        self._hashers: dict[str, BlockHasher] = {}
        self._ids = itertools.count()

    # -- requests ---------------------------------------------------------------------

    def hasher(self, cache_salt: str = "") -> BlockHasher:
        """The block hasher of a tenant: the engine's model and KV layout, salted."""
        if cache_salt not in self._hashers:
            ns = Namespace(self.model_id, self.kv_layout, "", cache_salt)
            self._hashers[cache_salt] = BlockHasher(ns, self.config.block_size, self.config.block_hash,
                                                    self.config.hash_secret)
        return self._hashers[cache_salt]

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (text, or token ids checked against the vocabulary)."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InvalidRequestError("this model has no tokenizer; send token ids")
            return self.tokenizer.encode(prompt)
        ids = list(prompt)
        vocab = self.model_config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"prompt token ids must be integers in [0, {vocab})")
        return ids

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        cache_salt: str = "",
    ) -> str:
        """Queue a request; returns its id. Raises ``InvalidRequestError`` and changes nothing
        if the request cannot be served (empty or too long a prompt, a duplicate id)."""
        ids = self.encode(prompt)
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        if len(ids) >= self.max_seq_len:
            raise InvalidRequestError(
                f"the prompt has {len(ids)} tokens; this engine holds at most {self.max_seq_len} "
                f"per sequence (context {self.max_model_len}), prompt and output together"
            )
        params = params or SamplingParams()
        params.check_vocab(self.model_config.vocab_size)
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; this model has none")
        request_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if request_id in self._requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        seq = Sequence(request_id, ids, params, self.hasher(cache_salt), self.device)
        self._requests[request_id] = seq
        if not self._start_fetch(seq):
            self.scheduler.add(seq)
        return request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its pages; False if it is unknown or already finished."""
        seq = self._requests.pop(request_id, None)
        if seq is None:
            return False
        if self._fetching.pop(request_id, None) is not None:
            self.connector.cancel(request_id)
        for loading in self._loads:  # its copies still run: the pages stay reserved till then
            if loading.seq is seq:
                loading.seq = None
        self.scheduler.finish(seq)
        seq.finish("abort", self.tokenizer.decode(seq.output_token_ids) if self.tokenizer else "")
        return True

    def hold_prefix(self, token_ids: list[int], cache_salt: str = "") -> int:
        """Keep the cached full blocks of ``token_ids`` in the pool for good (a reference
        that is never dropped, like a sequence that never ends); returns how many. For a
        pinned system prompt: its pages are never evicted locally."""
        hasher = self.hasher(cache_salt)
        cached = self.block_manager.find_cached(hasher.keys(token_ids))
        holder = Sequence(f"held-{next(self._ids)}", token_ids, SamplingParams(max_tokens=1), hasher)
        if not cached or not self.block_manager.allocate_slots(holder, 0, cached):
            return 0
        return len(cached)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self._fetching) or bool(self._loads)

    # -- the cache service (through the connector) --------------------------------------

    def _start_fetch(self, seq: Sequence) -> bool:
        """Ask the cache service for the blocks after the local hit; True if a fetch started
        (the request is queued when it completes)."""
        if self.connector is None:
            return False
        # As admission does: the last prompt token is always computed, for its logits.
        keys = seq.block_keys((seq.num_tokens - 1) // self.config.block_size)
        local = self.block_manager.num_cached(keys)
        if local == len(keys):
            return False
        self.connector.start_fetch(seq.request_id, keys[local:])
        self._fetching[seq.request_id] = seq
        return True

    def _receive_fetched(self) -> None:
        """Start loading what fetches brought into reserved pages; queue each request whose
        load is done (on the CPU at once; on a GPU once its copies completed)."""
        for request_id, result in self.connector.completed():
            seq = self._fetching.pop(request_id, None)
            if seq is not None:  # else aborted meanwhile
                self._loads.append(self._start_load(seq, result))
        while self._loads and self._loads[0].load.done():  # in order: a queue keeps its order
            self._finish_load(self._loads.pop(0))

    def _start_load(self, seq: Sequence, result: FetchResult) -> _Loading:
        """Reserve pages for the fetched blocks not already here and start copying into them.
        A block that does not fit a page, or finds no free page, ends the prefix there."""
        page = self.kv_cache.layout.nbytes
        keys, blocks, tiers = [], [], []
        for key, block, tier in zip(result.keys, result.blocks, result.tiers, strict=False):
            if block.nbytes != page:
                self.connector.reject(key, f"{block.nbytes} B where a page holds {page}")
                break
            if self.block_manager.cached_block_id(key) is None:  # else computed here meanwhile
                keys.append(key)
                blocks.append(block)
                tiers.append(tier)
        block_ids = self.block_manager.reserve(len(keys))
        if len(block_ids) < len(keys):  # the pool is full of running requests: prefill the rest
            self.connector.reject(keys[len(block_ids)], "no free pages to receive the blocks")
        n = len(block_ids)
        load = self._loader.load([self.kv_cache.page(b) for b in block_ids], blocks[:n])
        return _Loading(seq, keys[:n], tiers[:n], block_ids, load)

    def _finish_load(self, loading: _Loading) -> None:
        """Index the pages whose copies are whole, up to the first that is not (a block the
        service moved meanwhile: recomputed, never used); then queue the request."""
        whole = loading.load.whole()
        n = whole.index(False) if False in whole else len(whole)
        if n < len(whole):
            self.connector.moved(loading.keys[n])
        self.block_manager.commit(loading.block_ids[:n], loading.keys[:n])
        self.block_manager.release(loading.block_ids[n:])
        seq = loading.seq
        if seq is None:  # aborted while loading: the blocks stay cached all the same
            return
        seq.imported.update(zip(loading.keys[:n], loading.tiers[:n], strict=True))
        self.scheduler.add(seq)

    def _save(self, seq: Sequence, positions: list[int]) -> None:
        """Hand blocks that just filled to the cache service: staged now (on a GPU, copies
        queued on a side stream: the step does not wait), sent later. With too few free
        staging slots the deepest blocks are dropped, counted by the connector."""
        keys = seq.block_keys(positions[-1] + 1)
        staged = self._staging.stage([self.kv_cache.page(seq.block_table[i]) for i in positions])
        self.connector.save([
            SavedBlock(keys[i], keys[i - 1] if i else seq.hasher.root, i, s.view, s)
            for i, s in zip(positions, staged, strict=False)
        ])
        if len(staged) < len(positions):
            self.connector.drop(len(positions) - len(staged))

    def score(self, prompt: Prompt) -> torch.Tensor:
        """Logits [T, vocab] float32 at every position of ``prompt`` (the next-token logits).

        Runs outside the scheduler, in pages it frees again (its full blocks stay in the
        prefix cache); call it between steps. Raises ``InvalidRequestError`` if the pool
        lacks the pages.
        """
        ids = self.encode(prompt)
        seq = Sequence("score", ids, SamplingParams(max_tokens=1), self.hasher())
        if not ids or not self.block_manager.allocate_slots(seq, len(ids)):
            raise InvalidRequestError(f"cannot score {len(ids)} tokens with the free pages")
        try:
            inputs = self.runner.inputs([ScheduledChunk(seq, 0, len(ids))])
            rows = torch.arange(len(ids), device=self.runner.device)
            return self.runner.forward(replace(inputs, logit_rows=rows))
        finally:
            self.block_manager.free(seq)

    # -- stepping ---------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one batched forward pass; the outputs of the requests that got a new token."""
        if self.connector is not None:
            self._receive_fetched()
        chunks = self.scheduler.schedule()
        if not chunks:  # nothing to compute until a fetch lands or a load completes
            if self._loads:
                self._loads[0].load.wait()
            elif self._fetching:
                self.connector.wait(0.01)
            return []
        logits = self.runner.run(chunks)  # [B, V] for the chunks that sample
        for c in chunks:
            end = c.start + c.num_tokens
            c.seq.set_computed(end)
            filled = self.block_manager.cache_full_blocks(c.seq, c.start, end)
            if filled and self.connector is not None:
                self._save(c.seq, filled)
        sampling = [c for c in chunks if c.samples]
        return [self._append(c, logits[i], t) for i, (c, t) in enumerate(
            zip(sampling, self._sample(sampling, logits), strict=True))]

    def _sample(self, chunks: list[ScheduledChunk], logits: torch.Tensor) -> list[int]:
        seqs = [c.seq for c in chunks]
        adjusted = adjust_logits(logits, seqs, self.eos_token_ids)  # a copy: logprobs use the raw logits
        return sample(adjusted, [s.params for s in seqs], [s.generator for s in seqs])

    def _append(self, chunk: ScheduledChunk, logits: torch.Tensor, token: int) -> RequestOutput:
        seq = chunk.seq
        seq.append_token(token, _logprobs(logits, token, seq.params.logprobs))
        done = check_stop(seq, self.tokenizer, self.eos_token_ids, self.max_seq_len)
        if done is not None:
            seq.finish(*done)
            self.scheduler.finish(seq)
            del self._requests[seq.request_id]
        return RequestOutput.of(seq)

    def generate(
        self,
        prompts: Seq[Prompt],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        cache_salt: str = "",
    ) -> list[RequestOutput]:
        """Run ``prompts`` to completion, batched; their final outputs in the same order."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        ids = [self.add_request(p, sp, cache_salt=cache_salt) for p, sp in zip(prompts, params, strict=True)]
        final: dict[str, RequestOutput] = {}
        while any(i not in final for i in ids):
            for out in self.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[i] for i in ids]


def _logprobs(logits: torch.Tensor, token: int, top: int | None) -> dict[int, float] | None:
    """logits: [V] -> {token: logprob} of the chosen token and the ``top`` most likely."""
    if top is None:
        return None
    lp = torch.log_softmax(logits, dim=-1)
    best = torch.topk(lp, top) if top else None
    out = {token: float(lp[token])}
    if best is not None:
        out.update(zip(best.indices.tolist(), best.values.tolist(), strict=True))
    return out
