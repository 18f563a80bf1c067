"""The scheduler's half of kvtier's vLLM connector: how many more tokens the service has
for a request, and which blocks each step loads and saves.

Ownership: this object owns one ``_Tracked`` record per live request (its keys, the
service's answer, how far it has planned saves); vLLM owns the requests and block tables,
read through its own methods. Called from vLLM's scheduler thread only.

Lookups. ``get_num_new_matched_tokens`` may be called many times for a request (each
scheduling attempt) and must have no side effects; it asks the service at most once per
request and step (the answer is cached and reused within a step) and a dead or slow
service answers 0 tokens. vLLM must compute at least one prompt token, so a hit on the
whole prompt is reported one token short: the last block is still loaded, and vLLM
recomputes that one token over it.

Saves. Each step, every full block whose KV the step completes is planned for saving
unless the service already had it at lookup time (a block vLLM's local prefix cache held
but the service did not is saved too). Partial blocks are never saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clients.cache_client import CacheClient
from clients.sharded import ShardedCacheClient
from clients.vllm_connector_meta import LOG_EVERY_REQUESTS, BlockRun, KvtierMetadata, SchedulerStats, log
from clients.vllm_connector_meta import request_hasher as make_hasher
from hashing.keys import Namespace


@dataclass
class _Tracked:
    request: Any  # vllm.v1.request.Request
    keys: list[bytes] = field(default_factory=list)  # rank 0's keys of the full blocks looked up
    hit_blocks: int = 0  # leading blocks of ``keys`` the service had
    looked_up_at: int = -1  # the step of that answer
    load_tokens: int = 0  # tokens vLLM will load from the service this step (0: none)
    planned_saves: int = 0  # blocks [0, planned_saves) are saved, planned or were in the service


class SchedulerSide:
    def __init__(self, client: CacheClient | ShardedCacheClient, namespace: Namespace, block_size: int):
        self.client = client
        self.namespace = namespace  # tensor-parallel rank 0's: its keys stand for every rank's
        self.block_size = block_size
        self.stats = SchedulerStats()
        self._requests: dict[str, _Tracked] = {}
        self._step = 0

    # -- vLLM's scheduler calls ---------------------------------------------------------

    def num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> int:
        if not _cacheable(request):
            return 0
        tracked = self._track(request)
        if tracked.looked_up_at != self._step:
            self._look_up(tracked)
        hit_tokens = tracked.hit_blocks * self.block_size
        if hit_tokens >= request.num_tokens:
            hit_tokens = request.num_tokens - 1  # vLLM computes >= 1 token: the last one
        return max(0, hit_tokens - num_computed_tokens)

    def update_state_after_alloc(self, request: Any, num_external_tokens: int) -> None:
        self.stats.uncacheable_requests += not _cacheable(request)
        if num_external_tokens > 0:
            tracked = self._requests[request.request_id]
            tracked.load_tokens = num_external_tokens
            self.stats.matched_tokens += num_external_tokens
            self.stats.full_prompt_hits += tracked.hit_blocks * self.block_size >= request.num_tokens

    def build_meta(self, scheduler_output: Any) -> KvtierMetadata:
        meta = KvtierMetadata()
        block_state = scheduler_output.kv_connector_block_state
        for req_id, num_scheduled in scheduler_output.num_scheduled_tokens.items():
            tracked = self._requests.get(req_id)
            if tracked is None:
                continue
            block_ids = block_state.get_block_ids(req_id)[0]
            if tracked.load_tokens:
                meta.loads.append(self._load_run(tracked, block_ids))
                tracked.load_tokens = 0
            save = self._save_run(tracked, block_ids, num_scheduled)
            if save is not None:
                meta.saves.append(save)
        self._step += 1
        return meta

    def request_finished(self, request: Any) -> None:
        if self._requests.pop(request.request_id, None) is None:
            return
        self.stats.finished_requests += 1
        if self.stats.finished_requests % LOG_EVERY_REQUESTS == 0:
            self.log_stats()

    def log_stats(self) -> None:
        log.info("kvtier connector (scheduler): %s; client: %s", self.stats.as_dict(),
                 self.client.counters.as_dict())

    # -- planning -----------------------------------------------------------------------

    def _track(self, request: Any) -> _Tracked:
        tracked = self._requests.get(request.request_id)
        if tracked is None:
            tracked = self._requests[request.request_id] = _Tracked(request)
        return tracked

    def _look_up(self, tracked: _Tracked) -> None:
        request = tracked.request
        num_blocks = request.num_tokens // self.block_size
        if len(tracked.keys) < num_blocks:  # a preempted request resumes with more tokens
            tracked.keys = self._hasher(request).keys(request.all_token_ids[: num_blocks * self.block_size])
        tracked.hit_blocks = len(self.client.lookup(tracked.keys)) if tracked.keys else 0
        tracked.looked_up_at = self._step
        tracked.planned_saves = max(tracked.planned_saves, tracked.hit_blocks)
        self.stats.lookups += 1
        self.stats.looked_up_blocks += len(tracked.keys)
        self.stats.hit_blocks += tracked.hit_blocks

    def _load_run(self, tracked: _Tracked, block_ids: list[int]) -> BlockRun:
        """The blocks holding the loaded tokens: from the first past the local hit to the
        one holding the last loaded token (a whole block, also for a full-prompt hit)."""
        request, bs = tracked.request, self.block_size
        computed = request.num_computed_tokens
        first, end = (computed - tracked.load_tokens) // bs, -(-computed // bs)
        return self._run(request, first, block_ids[first:end])

    def _save_run(self, tracked: _Tracked, block_ids: list[int], num_scheduled: int) -> BlockRun | None:
        """The full blocks this step completes that are neither saved nor in the service.
        Tokens vLLM has not sampled yet (async scheduling) wait for a later step."""
        request = tracked.request
        filled = min(request.num_computed_tokens + num_scheduled, request.num_tokens) // self.block_size
        first = tracked.planned_saves
        if filled <= first:
            return None
        tracked.planned_saves = filled
        return self._run(request, first, block_ids[first:filled])

    def _run(self, request: Any, first: int, block_ids: list[int]) -> BlockRun:
        end = first + len(block_ids)
        return BlockRun(request.request_id, first, list(block_ids),
                        list(request.all_token_ids[: end * self.block_size]), request.cache_salt,
                        _adapter(request))

    def _hasher(self, request: Any):
        return make_hasher(self.namespace, self.block_size, request.cache_salt, _adapter(request))


def _cacheable(request: Any) -> bool:
    """Placeholder token ids do not name an image or a prompt embedding: those never hit."""
    return not request.mm_features and request.prompt_embeds is None


def _adapter(request: Any) -> str:
    lora = request.lora_request
    return "" if lora is None else f"lora:{lora.lora_name}"
