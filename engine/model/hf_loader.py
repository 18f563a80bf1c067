"""Load a Llama, Qwen2 or Mistral model from a Hugging Face folder.

The folder holds ``config.json`` and one or more ``*.safetensors`` files, and optionally
``tokenizer.json`` / ``tokenizer_config.json`` (without them the engine takes token ids).
Names and the rotary layout are already the engine's, so weights load as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from engine.config import ModelConfig, RopeScaling
from engine.errors import ModelNotFoundError, UnsupportedModelError
from engine.model.checkpoint import Checkpoint, fingerprint_files
from engine.model.tokenizer import Tokenizer

# Hugging Face ``model_type`` -> whether q/k/v projections always carry a bias
HF_ARCHITECTURES = {"llama": False, "mistral": False, "qwen2": True}
_ROPE_KINDS = ("default", "linear", "llama3")


def rope_scaling(cfg: dict[str, Any]) -> RopeScaling | None:
    """The rotary scaling of a config (``rope_scaling``, or transformers 5's ``rope_parameters``)."""
    raw = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    kind = raw.get("rope_type", raw.get("type", "default"))
    if kind not in _ROPE_KINDS:
        raise UnsupportedModelError(f"rope scaling {kind!r} is not supported; use one of {_ROPE_KINDS}")
    if kind == "default":
        return None
    return RopeScaling(
        kind=kind,
        factor=float(raw["factor"]),
        low_freq_factor=float(raw.get("low_freq_factor", 1.0)),
        high_freq_factor=float(raw.get("high_freq_factor", 4.0)),
        original_max_position=int(raw.get("original_max_position_embeddings", 8192)),
    )


def model_config(cfg: dict[str, Any]) -> ModelConfig:
    """Hyperparameters from a ``config.json`` dict."""
    arch = cfg.get("model_type")
    if arch not in HF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type {arch!r} is not supported; the engine runs {sorted(HF_ARCHITECTURES)}"
        )
    heads = int(cfg["num_attention_heads"])
    max_position = int(cfg.get("max_position_embeddings", 4096))
    window = cfg.get("sliding_window")
    if window and (arch == "mistral" or cfg.get("use_sliding_window")):
        max_position = min(max_position, int(window))  # within the window attention is full
    rope_theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
    return ModelConfig(
        architecture=arch,
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope_theta or 10000.0),
        max_position=max_position,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=HF_ARCHITECTURES[arch] or bool(cfg.get("attention_bias", False)),
        rope_scaling=rope_scaling(cfg),
    )


def load_hf_folder(path: Path, dtype: torch.dtype) -> Checkpoint:
    """Config, weights (in ``dtype``), tokenizer and fingerprint of a Hugging Face folder."""
    from safetensors.torch import load_file

    config_path = path / "config.json"
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{path} has a config.json but no *.safetensors weights")
    config = model_config(json.loads(config_path.read_text()))
    weights = {}
    for file in files:
        weights.update({k: v.to(dtype) for k, v in load_file(file).items()})
    if "lm_head.weight" not in weights and not config.tie_word_embeddings:
        raise ModelNotFoundError(f"{path}: untied model without lm_head.weight")
    return Checkpoint(
        config, weights, Tokenizer.from_hf_folder(path), fingerprint_files([config_path, *files])
    )
