"""Tiny random-weight Llama models for engine tests: 2 layers, block size 4, a dozen blocks."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.config import EngineConfig, ModelConfig
from engine.model.checkpoint import Checkpoint
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
    """Random float32 weights with Hugging Face names."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    h, i, d = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_heads * d, config.num_kv_heads * d
    w = {
        "model.embed_tokens.weight": rand(config.vocab_size, h, scale=1.0),
        "model.norm.weight": 1 + rand(h, scale=0.1),
    }
    if not config.tie_word_embeddings:
        w["lm_head.weight"] = rand(config.vocab_size, h)
    for n in range(config.num_layers):
        p = f"model.layers.{n}."
        w |= {
            p + "input_layernorm.weight": 1 + rand(h, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + rand(h, scale=0.1),
            p + "self_attn.q_proj.weight": rand(q, h),
            p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h),
            p + "self_attn.o_proj.weight": rand(h, q),
            p + "mlp.gate_proj.weight": rand(i, h),
            p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
        }
        if config.attention_bias:
            for name, size in (("q", q), ("k", kv), ("v", kv)):
                w[p + f"self_attn.{name}_proj.bias"] = rand(size, scale=0.1)
    return w


def tiny_checkpoint(config: ModelConfig = TINY, seed: int = 0) -> Checkpoint:
    return Checkpoint(config, tiny_weights(config, seed), None, f"tiny-{seed}")


def tiny_engine(**settings) -> LLMEngine:
    """A float32 tiny engine: block size 4, 12 blocks, unless ``settings`` say otherwise."""
    defaults = {"dtype": "float32", "block_size": 4, "num_blocks": 12, "max_num_seqs": 8,
                "max_num_batched_tokens": 64}
    return LLMEngine(EngineConfig(**(defaults | settings)), tiny_checkpoint())


def hf_config_dict(config: ModelConfig, model_type: str) -> dict:
    return {
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "mistral": "MistralForCausalLM"}[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position,
        "tie_word_embeddings": config.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }


def write_hf_folder(path: Path, config: ModelConfig, model_type: str, seed: int = 0) -> Path:
    """A Hugging Face folder (config.json + model.safetensors) with random weights."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config_dict(config, model_type)))
    save_file(tiny_weights(config, seed), str(path / "model.safetensors"))
    return path
