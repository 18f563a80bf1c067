"""Models of real size with random weights, for benchmarks: speed without downloads.

Speed does not depend on weight values, and 8B weights cannot be fetched everywhere, so
``random_checkpoint("llama3-8b", torch.bfloat16, "cuda")`` builds a checkpoint of that
shape with normal(0, 0.02) weights and unit norms, drawn directly on the device by a
generator on that device (no host copy, about a second for 8B on a GPU). It has no
tokenizer: send token ids. Its ``model_id`` (``random:llama3-8b:seed0``) keeps its blocks
apart from a real model's. Correctness is checked on real weights elsewhere; these are for
timing only.

The shapes are those of the published configs: Llama 3.1 8B (with its ``llama3`` rotary
scaling and 131,072 positions), Llama 3.2 1B, Qwen2.5 7B Instruct (Q/K/V biases) and
SmolLM2 135M.
"""

from __future__ import annotations

import math

import torch

from engine.config import ModelConfig, RopeScaling
from engine.model.checkpoint import Checkpoint

INIT_STD = 0.02

SHAPES: dict[str, ModelConfig] = {
    "llama3-8b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position=131072, tie_word_embeddings=False,
        rope_scaling=RopeScaling("llama3", factor=8.0),
    ),
    "llama3.2-1b": ModelConfig(
        architecture="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
        num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=500000.0, max_position=131072, tie_word_embeddings=True,
        rope_scaling=RopeScaling("llama3", factor=32.0),
    ),
    "qwen2.5-7b": ModelConfig(
        architecture="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
        num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6,
        rope_theta=1000000.0, max_position=32768, tie_word_embeddings=False, attention_bias=True,
    ),
    "smollm2-135m": ModelConfig(
        architecture="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
        rope_theta=100000.0, max_position=8192, tie_word_embeddings=True,
    ),
}


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a checkpoint of this shape, by Hugging Face name, in a fixed order
    (so a seeded generator draws the same weights each time)."""
    h, i, d = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_heads * d, config.num_kv_heads * d
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    for n in range(config.num_layers):
        p = f"model.layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
        if config.attention_bias:
            shapes |= {p + f"self_attn.{name}_proj.bias": (size,)
                       for name, size in (("q", q), ("k", kv), ("v", kv))}
    return shapes


def is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def num_parameters(config: ModelConfig) -> int:
    """Parameters of the shape, tied embeddings counted once."""
    return sum(math.prod(shape) for shape in weight_shapes(config).values())


def random_checkpoint(
    shape: str | ModelConfig, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> Checkpoint:
    """A checkpoint of ``shape`` (a name in ``SHAPES``, or a config) with random weights made
    on ``device``: normal(0, 0.02) matrices and biases, norms of ones. Benchmarks only."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"model shape {shape!r} is unknown; use one of {sorted(SHAPES)}")
        name, config = shape, SHAPES[shape]
    else:
        name, config = "custom", shape
    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed)
    weights = {}
    for key, size in weight_shapes(config).items():
        if is_norm(key):
            weights[key] = torch.ones(size, dtype=dtype, device=device)
        else:
            weights[key] = torch.empty(size, dtype=dtype, device=device).normal_(0, INIT_STD, generator=g)
    return Checkpoint(config, weights, None, f"random:{name}:seed{seed}")


def hf_config_dict(config: ModelConfig, model_type: str | None = None) -> dict:
    """The Hugging Face ``config.json`` of a shape (``model_type``: the architecture's)."""
    model_type = model_type or config.architecture
    out = {
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
    if config.attention_bias and model_type == "llama":
        out["attention_bias"] = True
    s = config.rope_scaling
    if s is not None:
        out["rope_scaling"] = {"rope_type": s.kind, "factor": s.factor}
        if s.kind == "llama3":
            out["rope_scaling"] |= {"low_freq_factor": s.low_freq_factor,
                                    "high_freq_factor": s.high_freq_factor,
                                    "original_max_position_embeddings": s.original_max_position}
    return out
