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
