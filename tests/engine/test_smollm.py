"""SmolLM2-135M-Instruct from its GGUF, against transformers loaded from the same file."""

import pytest
import torch

from engine.runtime.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
]
MAX_TOKENS = 12


def hf_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_float32_logits_match_transformers(smollm_engines, hf_smollm):
    engine = smollm_engines("float32")
    for prompt in PROMPTS[:2]:
        ids = engine.tokenizer.encode(prompt)
        ours, ref = engine.score(ids), hf_logits(hf_smollm, ids)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < 1e-3


def test_float32_greedy_generation_matches_transformers(smollm_engines, hf_smollm):
    engine = smollm_engines("float32")
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    ours = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    for ids, out in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = hf_smollm.generate(
                torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False, min_new_tokens=MAX_TOKENS
            )[0, len(ids) :].tolist()
        assert out.token_ids == ref


def test_bfloat16_stays_within_bf16_tolerance(smollm_engines, hf_smollm):
    """Relative error of all logits of the prompts (the norm of the difference over the norm
    of the float32 reference); a single position can exceed it, in transformers' own bf16 too."""
    engine = smollm_engines("bfloat16")
    diff = ref_norm = 0.0
    for prompt in PROMPTS:
        ids = engine.tokenizer.encode(prompt)
        ours, ref = engine.score(ids), hf_logits(hf_smollm, ids)
        diff += (ours - ref).pow(2).sum().item()
        ref_norm += ref.pow(2).sum().item()
        assert ours[-1].argmax().item() == ref[-1].argmax().item()
    assert (diff / ref_norm) ** 0.5 < 2e-2


def test_chat_generation_ends_at_end_of_turn(smollm_engines):
    engine = smollm_engines("float32")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = engine.tokenizer.apply_chat_template(messages)
    out = engine.generate([ids], SamplingParams(temperature=0, max_tokens=40))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids[-1] in engine.eos_token_ids
    assert "Paris" in out.text and "<|im_end|>" not in out.text


def test_stop_string_cuts_the_text(smollm_engines):
    engine = smollm_engines("float32")
    plain = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=8))[0]
    assert plain.text.startswith(" Paris.")
    out = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=8, stop=["."]))[0]
    assert out.text == " Paris" and out.finish_reason == "stop"


def test_engine_names_its_weights(smollm_engines):
    engine = smollm_engines("bfloat16")
    assert engine.kv_layout == "bfloat16/L30/H3/D64"
    assert engine.model_id.startswith("xxh3_128:")
