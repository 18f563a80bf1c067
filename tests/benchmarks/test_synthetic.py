import itertools

import pytest

from benchmarks.synthetic import WORKLOADS, PrefixIds, generate
from benchmarks.traces import dump_jsonl, load_jsonl


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_deterministic_for_a_seed(name):
    a = generate(name, seed=7, num_requests=200)
    assert a == generate(name, seed=7, num_requests=200)
    assert a != generate(name, seed=8, num_requests=200)
    assert len(a) == 200
    assert [r.timestamp_ms for r in a] == sorted(r.timestamp_ms for r in a)


def test_prefix_ids_name_content_after_a_prefix():
    ids = PrefixIds()
    a = ids.chain([], ["sys", "doc"])
    assert ids.chain([], ["sys", "doc"]) == a == [0, 1]
    assert ids.chain([], ["other", "doc"]) == [2, 3]  # same content after another prefix
    assert ids.extend_fresh(a, 2) == [0, 1, 4, 5]


def test_chat_turns_extend_the_last_turn():
    requests = generate("chat", seed=0, num_requests=50)
    sessions: dict[int, list] = {}
    for r in requests:
        sessions.setdefault(r.block_ids[len(r.block_ids) > 1], []).append(r.block_ids)
    for turns in sessions.values():
        for before, after in itertools.pairwise(turns):
            if after[: len(before)] == before:
                assert len(after) > len(before)


def test_trace_files_round_trip(tmp_path):
    requests = generate("rag", seed=2, num_requests=30)
    dump_jsonl(requests, tmp_path / "t.jsonl", block_tokens=16)
    assert load_jsonl(tmp_path / "t.jsonl", block_tokens=16) == [
        r.__class__(r.timestamp_ms, r.block_ids, 0) for r in requests
    ]


def test_partial_blocks_are_not_requested(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"timestamp": 5, "input_length": 1100, "hash_ids": [7, 8, 9]}\n')
    assert [r.block_ids for r in load_jsonl(tmp_path / "m.jsonl")] == [(7, 8)]


def test_missing_trace_says_how_to_fix(tmp_path):
    with pytest.raises(ValueError, match="--trace"):
        load_jsonl(tmp_path / "nope.jsonl")
