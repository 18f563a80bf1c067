"""Model shapes with random weights: exact sizes, and the same logits as transformers."""

from dataclasses import replace

import pytest
import torch

from benchmarks.hf_reference import ReferenceCache, transformers_model
from engine.config import EngineConfig
from engine.model.shapes import SHAPES, num_parameters, random_checkpoint
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams

# The parameter counts of the published models.
PUBLISHED = {
    "llama3-8b": 8_030_261_248,
    "llama3.2-1b": 1_235_814_400,
    "qwen2.5-7b": 7_615_616_512,
    "smollm2-135m": 134_515_008,
}
IDS = [3, 17, 42, 8, 8, 91, 0, 55, 23, 64, 12, 200, 7, 150, 99, 31, 4, 250, 128, 77]


def small(name: str):
    """A shape's architecture, rotary scaling, biases and tying, in a tiny size."""
    return replace(SHAPES[name], vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=16)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_shapes_have_the_published_parameter_counts(name):
    assert num_parameters(SHAPES[name]) == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_random_checkpoint_has_the_counted_parameters(name):
    ckpt = random_checkpoint(small(name), torch.bfloat16, "cpu", seed=3)
    assert sum(w.numel() for w in ckpt.weights.values()) == num_parameters(small(name))
    assert {w.dtype for w in ckpt.weights.values()} == {torch.bfloat16}
    assert ckpt.model_id == "random:custom:seed3" and ckpt.tokenizer is None
    norms = [w for n, w in ckpt.weights.items() if n.endswith("norm.weight")]
    assert all(bool((w == 1).all()) for w in norms)
    q = ckpt.weights["model.layers.0.self_attn.q_proj.weight"].float()
    assert 0.015 < q.std() < 0.025


def test_random_checkpoint_is_seeded_and_named():
    a = random_checkpoint("smollm2-135m", torch.float32, "cpu", seed=1)
    b = random_checkpoint(small("smollm2-135m"), torch.float32, "cpu", seed=1)
    assert a.model_id == "random:smollm2-135m:seed1"
    name = "model.layers.0.mlp.down_proj.weight"
    assert a.weights[name].shape == (576, 1536)
    assert sum(w.numel() for w in a.weights.values()) == PUBLISHED["smollm2-135m"]
    c = random_checkpoint(small("smollm2-135m"), torch.float32, "cpu", seed=1)
    assert all(torch.equal(b.weights[n], c.weights[n]) for n in b.weights)
    with pytest.raises(ValueError, match="llama3-8b"):
        random_checkpoint("llama-9000", torch.float32, "cpu")


def test_engine_generates_on_a_random_shape():
    engine = LLMEngine(EngineConfig(dtype="float32", num_blocks=16, block_size=4),
                       random_checkpoint(small("llama3.2-1b"), torch.float32, "cpu"))
    (out,) = engine.generate([IDS], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


@pytest.mark.parametrize("name", ["llama3-8b", "llama3.2-1b", "qwen2.5-7b"])
def test_transformers_on_the_same_tensors_gives_our_logits(name):
    """What makes the side-by-side benchmark honest: one set of weights, the same numbers."""
    ckpt = random_checkpoint(small(name), torch.float32, "cpu", seed=2)
    model = transformers_model(ckpt)
    embed = ckpt.weights["model.embed_tokens.weight"]
    assert model.model.embed_tokens.weight.data_ptr() == embed.data_ptr()  # shared, not copied
    assert model.config._attn_implementation == "sdpa"
    ours = LLMEngine(EngineConfig(dtype="float32", num_blocks=16, block_size=4), ckpt).score(IDS)
    with torch.inference_mode():
        theirs = model(torch.tensor([IDS])).logits[0]
    assert ours.std() > 0.1
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)


def test_reference_cache_crops_back_to_the_prefix():
    model = transformers_model(random_checkpoint(small("qwen2.5-7b"), torch.float32, "cpu"))
    ref = ReferenceCache(model)
    ids = torch.tensor([IDS])
    with torch.inference_mode():
        full = model(ids).logits[0, -1]
        ref.forward(ids[:, :12])
        first = ref.forward(ids[:, 12:])
        ref.crop(12)
        assert ref.cache.get_seq_length() == 12
        again = ref.forward(ids[:, 12:])
    assert torch.allclose(first, full, atol=1e-5) and torch.equal(first, again)
