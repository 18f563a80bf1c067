"""Continuous batching: token budget, chunked prefill, admission, preemption."""

from engine.runtime.block_manager import BlockManager
from engine.runtime.sampling_params import SamplingParams
from engine.runtime.scheduler import Scheduler
from engine.runtime.sequence import Sequence, SequenceStatus
from hashing.keys import BlockHasher, Namespace

BS = 4
HASHER = BlockHasher(Namespace("m", "l"), BS)


def seq(rid: str, n: int, first: int = 0) -> Sequence:
    return Sequence(rid, list(range(first, first + n)), SamplingParams(), HASHER)


def run_step(sched: Scheduler, bm: BlockManager, new_token: int = 1):
    """Schedule, mark the chunks computed, append a token where one is sampled."""
    chunks = sched.schedule()
    for c in chunks:
        c.seq.set_computed(c.start + c.num_tokens)
        bm.cache_full_blocks(c.seq, c.start, c.start + c.num_tokens)
        if c.samples:
            c.seq.append_token(new_token)
    return [(c.seq.request_id, c.start, c.num_tokens) for c in chunks]


def make(num_blocks=12, max_seqs=4, budget=16):
    bm = BlockManager(num_blocks, BS)
    return Scheduler(bm, max_seqs, budget), bm


def test_prompts_are_chunked_to_the_token_budget():
    sched, bm = make(budget=8)
    sched.add(seq("a", 10))
    sched.add(seq("b", 5, 100))
    assert run_step(sched, bm) == [("a", 0, 8)]
    assert run_step(sched, bm) == [("a", 8, 2), ("b", 0, 5)]
    assert run_step(sched, bm) == [("a", 10, 1), ("b", 5, 1)]


def test_decodes_go_before_prompts_in_progress():
    sched, bm = make(budget=6)
    sched.add(seq("a", 3))
    assert run_step(sched, bm) == [("a", 0, 3)]
    sched.add(seq("b", 20, 100))
    assert run_step(sched, bm) == [("a", 3, 1), ("b", 0, 5)]
    assert run_step(sched, bm) == [("a", 4, 1), ("b", 5, 5)]


def test_max_num_seqs_caps_admission():
    sched, bm = make(max_seqs=2)
    for rid in "abc":
        sched.add(seq(rid, 2, ord(rid) * 10))
    assert [r for r, *_ in run_step(sched, bm)] == ["a", "b"]
    assert [s.request_id for s in sched.waiting] == ["c"]


def test_admission_shares_cached_prefix_and_computes_the_rest():
    sched, bm = make()
    sched.add(seq("a", 10))
    run_step(sched, bm)
    sched.add(seq("b", 9))  # same first 8 tokens: 2 full blocks cached
    assert run_step(sched, bm) == [("a", 10, 1), ("b", 8, 1)]
    b = sched.running[1]
    assert b.num_cached_tokens == 8
    assert b.block_table[:2] == sched.running[0].block_table[:2]


def test_fully_cached_prompt_still_computes_its_last_token():
    sched, bm = make()
    sched.add(seq("a", 8))
    run_step(sched, bm)
    sched.add(seq("b", 8))
    # both blocks are cached, but the last token's logits are needed: block 1 is recomputed
    assert run_step(sched, bm) == [("a", 8, 1), ("b", 4, 4)]


def test_newest_sequence_is_preempted_when_pages_run_out():
    sched, bm = make(num_blocks=4, budget=16)
    sched.add(seq("a", 7))
    sched.add(seq("b", 7, 100))
    assert run_step(sched, bm) == [("a", 0, 7), ("b", 0, 7)]  # 2 + 2 pages
    assert run_step(sched, bm) == [("a", 7, 1), ("b", 7, 1)]  # 8 tokens: blocks now full
    # a needs a third page: b (newest) is preempted, and nothing is admitted this step
    assert run_step(sched, bm) == [("a", 8, 1)]
    b = sched.waiting[0]
    assert b.status is SequenceStatus.WAITING and b.num_computed_tokens == 0
    assert b.num_tokens == 9 and b.num_preemptions == 1
    assert sched.stats.preemptions == 1


def test_preempted_sequence_resumes_from_its_cached_blocks():
    sched, bm = make(num_blocks=5, budget=16)
    sched.add(seq("a", 7))
    sched.add(seq("b", 7, 100))
    run_step(sched, bm)
    run_step(sched, bm)
    run_step(sched, bm)  # b preempted; a holds 3 pages
    a = sched.running[0]
    sched.finish(a)
    # b's 2 full blocks survived in the free list: only its last token is recomputed
    assert run_step(sched, bm) == [("b", 8, 1)]
    assert sched.running[0].num_cached_tokens == 0  # hits on resumption are not prompt hits
