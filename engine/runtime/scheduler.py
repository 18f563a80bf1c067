"""Continuous batching: which sequences run in the next step, and how many tokens each.

First come, first served, under two caps: ``max_num_seqs`` running sequences and
``max_num_batched_tokens`` tokens per step. Each step:

1. Running sequences are served decodes first (one token each), then prompts in
   progress, each taking what the remaining budget allows: a long prompt is split across
   steps (chunked prefill), so running decodes keep flowing.
2. If a running sequence needs a page and none is free, the newest running sequence is
   preempted: its pages are freed and it goes back to the head of the queue, to be
   recomputed later (its pages usually survive in the prefix cache, so recomputation is
   mostly a hit).
3. If nothing was preempted, waiting sequences are admitted in order: their leading
   full blocks already in the pool are shared (prefix-cache hit), the rest is prefilled.

The scheduler owns the two queues; pages belong to the ``BlockManager``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.runtime.block_manager import BlockManager
from engine.runtime.sequence import Sequence, SequenceStatus


@dataclass(frozen=True)
class ScheduledChunk:
    """Compute tokens ``[start, start + num_tokens)`` of ``seq`` in this step."""

    seq: Sequence
    start: int
    num_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this chunk reaches the sequence's last token, so a new token is sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerStats:
    steps: int = 0
    preemptions: int = 0
    admitted: int = 0


@dataclass
class Scheduler:
    block_manager: BlockManager
    max_num_seqs: int
    max_num_batched_tokens: int
    stats: SchedulerStats = field(default_factory=SchedulerStats)

    def __post_init__(self) -> None:
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledChunk]:
        """The chunks of the next step (empty if there is nothing to do)."""
        self.stats.steps += 1
        budget = self.max_num_batched_tokens
        scheduled: dict[str, ScheduledChunk] = {}
        preempted = False
        # Decodes first, then prompts in progress; stable, so FCFS within each.
        for seq in sorted(self.running, key=lambda s: s.num_tokens - s.num_computed_tokens > 1):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while not self.block_manager.allocate_slots(seq, n):
                victim = self.running[-1]
                self.preempt(victim)
                preempted = True
                if victim.request_id in scheduled:  # give back what it was given
                    budget += scheduled.pop(victim.request_id).num_tokens
                if victim is seq:
                    break
            else:
                scheduled[seq.request_id] = ScheduledChunk(seq, seq.num_computed_tokens, n)
                budget -= n
        chunks = list(scheduled.values())
        if not preempted:
            chunks += self._admit(budget)
        return chunks

    def _admit(self, budget: int) -> list[ScheduledChunk]:
        chunks = []
        bs = self.block_manager.block_size
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # At least the last token is computed: its logits give the next token.
            cached = self.block_manager.find_cached(seq.block_keys((seq.num_tokens - 1) // bs))
            num_cached = len(cached) * bs
            n = min(seq.num_tokens - num_cached, budget)
            if not self.block_manager.allocate_slots(seq, n, cached):
                break
            self.waiting.popleft()
            seq.admit(num_cached)
            self.running.append(seq)
            self.stats.admitted += 1
            chunks.append(ScheduledChunk(seq, num_cached, n))
            budget -= n
        return chunks

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s pages and queue it first, to be recomputed from its tokens."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.preempt()
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Drop a finished (or aborted) sequence from the queues and free its pages."""
        if seq in self.running:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
