"""Tiny random-weight Llama models for engine tests: 2 layers, block size 4, a dozen blocks."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.config import EngineConfig, ModelConfig
from engine.model.checkpoint import Checkpoint
from engine.model.shapes import hf_config_dict, is_norm, weight_shapes
from engine.runtime.llm_engine import LLMEngine

TINY = ModelConfig(
    architecture="llama",
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position=64,
    tie_word_embeddings=False,
)


def tiny_weights(config: ModelConfig = TINY, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights with Hugging Face names: large enough that every layer matters."""
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in weight_shapes(config).items():
        scale = 0.1 if is_norm(name) or name.endswith("bias") else 1.0 if "embed" in name else 0.3
        weights[name] = torch.randn(*shape, generator=g) * scale + (1 if is_norm(name) else 0)
    return weights


def tiny_checkpoint(config: ModelConfig = TINY, seed: int = 0) -> Checkpoint:
    return Checkpoint(config, tiny_weights(config, seed), None, f"tiny-{seed}")


def tiny_engine(**settings) -> LLMEngine:
    """A float32 tiny engine: block size 4, 12 blocks, unless ``settings`` say otherwise."""
    defaults = {"dtype": "float32", "block_size": 4, "num_blocks": 12, "max_num_seqs": 8,
                "max_num_batched_tokens": 64}
    return LLMEngine(EngineConfig(**(defaults | settings)), tiny_checkpoint())


def write_hf_folder(path: Path, config: ModelConfig, model_type: str, seed: int = 0) -> Path:
    """A Hugging Face folder (config.json + model.safetensors) with random weights."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config_dict(config, model_type)))
    save_file(tiny_weights(config, seed), str(path / "model.safetensors"))
    return path


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_chat_model(path: Path, config: ModelConfig, seed: int = 0) -> Path:
    """A Hugging Face folder a chat server can serve with no download: random weights and a
    byte-level tokenizer (256 byte tokens, then ``<|im_start|>`` and ``<|im_end|>``, the EOS)
    with a ChatML template. ``config.vocab_size`` must be 258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if config.vocab_size != 258:
        raise ValueError(f"a byte-level chat model has 258 tokens, not {config.vocab_size}")
    write_hf_folder(path, config, "llama", seed)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>",
                                                            "chat_template": CHAT_TEMPLATE}))
    return path
