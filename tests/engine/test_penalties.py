"""Logit bias, repetition/frequency/presence penalties and min_tokens: exact numbers on a
hand-made row, then the tiny model's greedy tokens replayed step by step from its logits."""

import pytest
import torch

from engine.errors import InvalidRequestError
from engine.runtime.sampler import adjust_logits
from engine.runtime.sampling_params import SamplingParams
from engine.runtime.sequence import Sequence
from hashing.keys import BlockHasher, Namespace
from tests.engine.tiny import tiny_engine

HASHER = BlockHasher(Namespace("m", "l", "", ""), 4)
ROW = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])


def seq_with(prompt: list[int], output: list[int], **params) -> Sequence:
    seq = Sequence("r", prompt, SamplingParams(**params), HASHER)
    for t in output:
        seq.append_token(t)
    return seq


def test_frequency_and_presence_penalties_count_output_tokens_only():
    seq = seq_with([4, 4], [0, 3, 0], frequency_penalty=0.5, presence_penalty=0.25)
    out = adjust_logits(ROW[None], [seq], ())[0]
    # token 0: twice (2 * 0.5 + 0.25); token 3: once (0.5 + 0.25); token 4 only in the prompt.
    assert out.tolist() == [2.0 - 1.25, -1.0, 0.5, 3.0 - 0.75, -2.0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    seq = seq_with([4], [0, 1], repetition_penalty=2.0)
    out = adjust_logits(ROW[None], [seq], ())[0]
    assert out.tolist() == [1.0, -2.0, 0.5, 3.0, -4.0]


def test_logit_bias_and_min_tokens_mask_end_tokens_until_reached():
    seq = seq_with([1], [2], logit_bias={3: -3.0, 1: 1.5}, min_tokens=2, stop_token_ids=[0])
    out = adjust_logits(ROW[None], [seq], end_token_ids={4})[0]
    assert out.tolist() == [float("-inf"), 0.5, 0.5, 0.0, float("-inf")]
    seq.append_token(2)  # min_tokens reached: the end tokens come back
    assert adjust_logits(ROW[None], [seq], {4})[0].tolist() == [2.0, 0.5, 0.5, 0.0, -2.0]


def test_rows_that_ask_for_nothing_are_not_touched():
    logits = torch.stack([ROW, ROW])
    plain, penalised = seq_with([0], [0]), seq_with([0], [0], presence_penalty=1.0)
    assert adjust_logits(logits, [plain, plain], ()) is logits
    out = adjust_logits(logits, [plain, penalised], ())
    assert out[0].tolist() == ROW.tolist() and out[1, 0] == ROW[0] - 1
    assert logits[1].tolist() == ROW.tolist()  # the raw logits stay as they were (for logprobs)


@pytest.mark.parametrize("settings", [{"presence_penalty": 2.5}, {"frequency_penalty": -3},
                                      {"repetition_penalty": 0}, {"logit_bias": {1: 101}},
                                      {"min_tokens": 5, "max_tokens": 4}])
def test_bad_penalties_are_refused(settings):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**settings)


def test_logit_bias_outside_the_vocabulary_is_refused_before_it_runs():
    engine = tiny_engine()
    with pytest.raises(InvalidRequestError, match="token ids in"):
        engine.add_request([1, 2, 3], SamplingParams(logit_bias={96: 1.0}))
    assert not engine.has_unfinished_requests()


PROMPT = [5, 17, 33, 2, 9, 41]


def replay(engine, params: SamplingParams, output: list[int]) -> list[int]:
    """The greedy tokens the penalties should give: each step's raw logits (scored again),
    penalised by hand from the tokens before it."""
    logits = engine.score(PROMPT + output)[len(PROMPT) - 1 :]  # [len(output) + 1, V]
    want = []
    for step, row in enumerate(logits[: len(output)]):
        counts = torch.bincount(torch.tensor(output[:step], dtype=torch.long), minlength=row.shape[0])
        penalised = row - params.frequency_penalty * counts - params.presence_penalty * (counts > 0)
        want.append(int(torch.argmax(penalised)))
    return want


def test_penalties_change_the_tiny_models_greedy_tokens_exactly_as_defined():
    engine = tiny_engine()
    plain = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12))[0].token_ids
    assert len(set(plain)) < len(plain)  # greedy repeats itself on this model
    for params in (SamplingParams(temperature=0, max_tokens=12, frequency_penalty=1.5),
                   SamplingParams(temperature=0, max_tokens=12, presence_penalty=2.0)):
        got = engine.generate([PROMPT], params)[0].token_ids
        assert got != plain
        assert got == replay(engine, params, got)
    strong = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, presence_penalty=2.0,
                                                      frequency_penalty=2.0))[0].token_ids
    assert len(set(strong)) > len(set(plain))


def test_min_tokens_and_logit_bias_on_the_tiny_model():
    engine = tiny_engine()
    first = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=1))[0].token_ids[0]
    stop_first = SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[first])
    stopped = engine.generate([PROMPT], stop_first)[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    held = engine.generate([PROMPT], SamplingParams(temperature=0, max_tokens=8, min_tokens=4,
                                                    stop_token_ids=[first]))[0]
    assert len(held.token_ids) >= 4 and first not in held.token_ids[:4]
    biased = engine.generate([PROMPT], SamplingParams(temperature=0.8, seed=1, max_tokens=6,
                                                      logit_bias={7: 100}))[0]
    assert biased.token_ids == [7] * 6


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_every_adjustment_runs_on_the_logits_device(device):
    seq = seq_with([4], [0, 3, 0], frequency_penalty=0.5, presence_penalty=0.25, repetition_penalty=2.0,
                   logit_bias={2: 1.0}, min_tokens=4, stop_token_ids=[1])
    logits = ROW[None].to(device)
    out = adjust_logits(logits, [seq], end_token_ids={4})
    assert out.device == logits.device
    # 0: 2/2 - 2*0.5 - 0.25; 1: masked; 2: 0.5 + 1; 3: 3/2 - 0.5 - 0.25; 4: masked (end token)
    assert out[0].cpu().tolist() == [-0.25, float("-inf"), 1.5, 0.75, float("-inf")]
