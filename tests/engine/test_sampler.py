"""Greedy, temperature, top-k, top-p and seeds."""

import pytest
import torch

from engine.errors import InvalidRequestError
from engine.runtime.sampler import filter_top_k, filter_top_p, sample
from engine.runtime.sampling_params import SamplingParams

LOGITS = torch.tensor([1.0, 3.0, 2.0, 0.0, -1.0])


def test_greedy_takes_argmax():
    logits = torch.stack([LOGITS, LOGITS.flip(0)])
    assert sample(logits, [SamplingParams(temperature=0)] * 2, [None, None]) == [1, 3]


def test_top_k_keeps_k_largest():
    out = filter_top_k(LOGITS, 2)
    assert torch.isinf(out).tolist() == [True, False, False, True, True]
    assert torch.equal(filter_top_k(LOGITS, 0), LOGITS)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, 0)  # [0.086, 0.636, 0.234, 0.032, 0.012]
    assert probs[1] < 0.7 < probs[1] + probs[2]
    out = filter_top_p(LOGITS, 0.7)
    assert torch.isinf(out).tolist() == [True, False, False, True, True]
    assert torch.isinf(filter_top_p(LOGITS, 0.5)).tolist() == [True, False, True, True, True]


def test_top_k_one_is_greedy_at_any_temperature():
    params = SamplingParams(temperature=5.0, top_k=1)
    gens = [torch.Generator().manual_seed(i) for i in range(20)]
    assert sample(LOGITS.expand(20, 5), [params] * 20, gens) == [1] * 20


def test_seed_reproduces_and_samples_spread():
    params = SamplingParams(temperature=1.0, seed=7)
    draw = [sample(LOGITS[None], [params], [torch.Generator().manual_seed(7)])[0] for _ in range(3)]
    assert len(set(draw)) == 1
    g = torch.Generator().manual_seed(0)
    many = [sample(LOGITS[None], [params], [g])[0] for _ in range(300)]
    assert set(many) >= {0, 1, 2}
    assert many.count(1) > many.count(2) > many.count(0)


@pytest.mark.parametrize(
    "settings",
    [{"max_tokens": 0}, {"max_tokens": -3}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5},
     {"top_k": -1}, {"stop": [""]}, {"logprobs": -1}],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**settings)


def test_stop_accepts_a_string_or_list():
    assert SamplingParams(stop="x").stop == ("x",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
