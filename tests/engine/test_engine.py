"""The engine on a tiny random model: batching, prefix hits, chunking and preemption
change nothing in the output; bad requests are refused and the rest keep running."""

import pytest

from engine.errors import InvalidRequestError
from engine.runtime.sampling_params import SamplingParams
from tests.engine.tiny import tiny_engine

GREEDY = SamplingParams(temperature=0, max_tokens=6, logprobs=0)
PROMPTS = [[5, 9, 13, 2, 7, 1, 30], [40, 41, 42], [7, 7, 8, 9, 10, 11, 12, 13, 14, 3, 50]]


def alone(prompt, params=GREEDY, **settings):
    return tiny_engine(**settings).generate([prompt], params)[0]


def logprob_list(out):
    return [lp[t] for lp, t in zip(out.logprobs, out.token_ids, strict=True)]


def test_generates_max_tokens():
    out = alone(PROMPTS[0])
    assert len(out.token_ids) == 6
    assert out.finished and out.finish_reason == "length"
    assert out.prompt_token_ids == PROMPTS[0]


def test_batch_gives_the_same_tokens_as_each_prompt_alone():
    batch = tiny_engine().generate(PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, batch, strict=True):
        single = alone(prompt)
        assert out.token_ids == single.token_ids
        assert logprob_list(out) == pytest.approx(logprob_list(single), abs=1e-5)


def test_prefix_hit_gives_the_same_tokens_and_logits():
    engine = tiny_engine()
    cold = engine.generate([PROMPTS[2]], GREEDY)[0]
    warm = engine.generate([PROMPTS[2]], GREEDY)[0]
    assert cold.num_cached_tokens == 0
    assert warm.num_cached_tokens == 8  # two full blocks of 4
    assert warm.token_ids == cold.token_ids
    assert logprob_list(warm) == pytest.approx(logprob_list(cold), abs=1e-4)
    for w, c in zip(warm.logprobs, cold.logprobs, strict=True):
        assert w.keys() == c.keys()


def test_other_tenant_gets_no_hit():
    engine = tiny_engine()
    engine.generate([PROMPTS[2]], GREEDY, cache_salt="tenant-a")
    other = engine.generate([PROMPTS[2]], GREEDY, cache_salt="tenant-b")[0]
    same = engine.generate([PROMPTS[2]], GREEDY, cache_salt="tenant-a")[0]
    assert other.num_cached_tokens == 0
    assert same.num_cached_tokens == 8


def test_chunked_prefill_gives_the_same_as_one_shot():
    one_shot = alone(PROMPTS[2])
    chunked = alone(PROMPTS[2], max_num_batched_tokens=3)
    assert chunked.token_ids == one_shot.token_ids
    assert logprob_list(chunked) == pytest.approx(logprob_list(one_shot), abs=1e-5)


def test_preemption_and_resumption_give_the_same_output():
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=0)
    roomy = tiny_engine(num_blocks=40).generate(PROMPTS, params)
    tight_engine = tiny_engine(num_blocks=9)
    tight = tight_engine.generate(PROMPTS, params)
    assert tight_engine.scheduler.stats.preemptions > 0
    for r, t in zip(roomy, tight, strict=True):
        assert t.token_ids == r.token_ids


def test_seeded_sampling_is_independent_of_the_batch():
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=20, seed=3, max_tokens=8)
    single = alone(PROMPTS[1], params)
    batch = tiny_engine().generate(PROMPTS, [GREEDY, params, GREEDY])
    assert batch[1].token_ids == single.token_ids


def test_stop_token_ids_end_generation():
    first = alone(PROMPTS[0]).token_ids
    out = alone(PROMPTS[0], SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[first[2]]))
    assert out.token_ids == first[:3]
    assert out.finish_reason == "stop"


def test_sequence_ends_at_the_context_length():
    out = alone(PROMPTS[0], SamplingParams(temperature=0, max_tokens=100), max_model_len=10)
    assert len(out.prompt_token_ids) + len(out.token_ids) == 10
    assert out.finish_reason == "length"


def test_abort_frees_pages_and_others_continue():
    engine = tiny_engine()
    a = engine.add_request(PROMPTS[0], GREEDY)
    b = engine.add_request(PROMPTS[1], GREEDY)
    engine.step()
    assert engine.abort(a)
    assert not engine.abort(a)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert {o.request_id for o in outs} == {b}
    assert outs[-1].token_ids == alone(PROMPTS[1]).token_ids
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (list(range(64)), "the prompt has 64 tokens"),
        ([], "empty"),
        ([1, 2, 500], r"token ids must be integers in \[0, 96\)"),
        ("text", "no tokenizer"),
    ],
)
def test_bad_requests_are_refused_and_the_engine_keeps_serving(prompt, message):
    engine = tiny_engine(num_blocks=40)
    good = engine.add_request(PROMPTS[0], GREEDY)
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request(prompt, GREEDY)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    assert outs[-1].request_id == good and outs[-1].token_ids == alone(PROMPTS[0]).token_ids


def test_prompt_longer_than_the_pool_is_refused():
    engine = tiny_engine(num_blocks=3)  # 12 tokens
    with pytest.raises(InvalidRequestError, match="at most 12"):
        engine.add_request(list(range(12)), GREEDY)


def test_max_tokens_zero_is_refused():
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_stop_strings_without_a_tokenizer_are_refused():
    with pytest.raises(InvalidRequestError, match="stop strings need a tokenizer"):
        tiny_engine().add_request(PROMPTS[0], SamplingParams(stop=["x"]))


def test_duplicate_request_id_is_refused():
    engine = tiny_engine()
    engine.add_request(PROMPTS[0], GREEDY, request_id="x")
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request(PROMPTS[1], GREEDY, request_id="x")


def test_engine_exposes_the_block_key_namespace():
    engine = tiny_engine()
    assert engine.model_id == "tiny-0"
    assert engine.kv_layout == "float32/L2/H2/D8"
    out = engine.generate([PROMPTS[2]], GREEDY)[0]
    keys = engine.hasher().keys(out.prompt_token_ids)
    assert [engine.block_manager.cached_block_id(k) is not None for k in keys] == [True, True]
