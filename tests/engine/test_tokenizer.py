"""The GGUF tokenizer and chat template, against transformers' reading of the same file."""

import pytest

from engine.model.loader import default_tokenizer_for_keys
from engine.model.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

TEXTS = [
    "Hello world",
    "  leading spaces and numbers 12345 and 3.14159",
    "<|im_start|>user\nHi there!<|im_end|>\n",
    "def f(x):\n    return x ** 2  # square\n",
    "Ünïcödé and emoji 🎉 text",
]


@pytest.fixture(scope="module")
def tokenizer(smollm_checkpoint) -> Tokenizer:
    return smollm_checkpoint.tokenizer


def test_encode_matches_transformers(tokenizer, hf_tokenizer):
    for text in TEXTS:
        assert tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False).input_ids, text


def test_decode_round_trips_and_drops_special_tokens(tokenizer):
    for text in TEXTS[:2] + TEXTS[3:]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode(tokenizer.encode(TEXTS[2])) == "user\nHi there!\n"


def test_special_tokens_and_end_of_turn(tokenizer):
    assert tokenizer.encode("<|im_start|>") == [1]
    assert 2 in tokenizer.eos_token_ids  # <|im_end|>


def test_chat_template_matches_transformers(tokenizer, hf_tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    ours = tokenizer.apply_chat_template(messages)
    ref = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ref = ref["input_ids"] if isinstance(ref, dict) or hasattr(ref, "keys") else ref
    assert ours == list(ref)
    text = tokenizer.decode(ours)
    assert "You are a helpful AI assistant named SmolLM" in text


def test_default_tokenizer_for_keys(tokenizer, smollm_engines):
    ids, model_id, layout = default_tokenizer_for_keys("Hello world")
    engine = smollm_engines("auto")
    assert ids == tokenizer.encode("Hello world")
    assert model_id == engine.model_id
    assert layout == engine.kv_layout
