"""Load a Llama-family model from a GGUF file (llama.cpp's format), dequantised.

llama.cpp's converter permutes the rows of Q and K of ``llama`` models so that rotary
pairs are adjacent (``x[2i], x[2i+1]``); the engine uses the Hugging Face layout (pairs
``x[i], x[i + d/2]``), so those rows are permuted back here::

    GGUF rows of one head:  p0a p0b p1a p1b ...     (pair i at 2i, 2i+1)
    HF rows of one head:    p0a p1a ... | p0b p1b ...  (pair i at i, i + d/2)

``qwen2`` GGUFs keep the Hugging Face layout and are not permuted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import ModelConfig, RopeScaling
from engine.errors import ModelNotFoundError, UnsupportedModelError
from engine.model.checkpoint import Checkpoint, fingerprint_files
from engine.model.tokenizer import Tokenizer

# GGUF general.architecture -> (engine architecture, whether Q/K rows are permuted)
GGUF_ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False)}

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def read_metadata(reader: Any) -> dict[str, Any]:
    """Every GGUF key/value field as plain Python values."""
    return {name: field.contents() for name, field in reader.fields.items()}


def open_gguf(path: Path) -> Any:
    """A ``GGUFReader`` for ``path``, or ``ModelNotFoundError`` if it is no GGUF file."""
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ModelNotFoundError(f"{path} is not a readable GGUF file: {e}") from e


def gguf_architecture(meta: dict[str, Any], path: Path) -> tuple[str, bool]:
    arch = meta.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{path}: GGUF architecture {arch!r} is not supported; the engine runs "
            f"{sorted(GGUF_ARCHITECTURES)} models"
        )
    return arch, GGUF_ARCHITECTURES[arch][1]


def model_config(meta: dict[str, Any], arch: str, rope_factors: torch.Tensor | None) -> ModelConfig:
    """The model's hyperparameters from ``<arch>.*`` metadata."""

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise UnsupportedModelError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    scaling = None
    if meta.get(f"{arch}.rope.scaling.type") == "linear":
        scaling = RopeScaling("linear", float(get("rope.scaling.factor")))
    return ModelConfig(
        architecture=GGUF_ARCHITECTURES[arch][0],
        vocab_size=int(meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position=int(get("context_length")),
        tie_word_embeddings=False,  # decided by the loader: no output.weight means tied
        attention_bias=arch == "qwen2",
        rope_scaling=scaling,
        rope_freq_factors=None if rope_factors is None else tuple(rope_factors.tolist()),
    )


def hf_name(gguf_name: str) -> str | None:
    """The Hugging Face name of a GGUF tensor, or None for tensors the model does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def unpermute_rope_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (see the module docstring).

    w: [num_heads * head_dim, in] (or [num_heads * head_dim] for a bias)
    """
    rest = w.shape[1:]
    half = w.shape[0] // num_heads // 2
    # [heads, half, 2, ...] -> [heads, 2, half, ...]
    return w.reshape(num_heads, half, 2, *rest).transpose(1, 2).reshape(w.shape)


def dequantize(tensor: Any) -> torch.Tensor:
    """A GGUF tensor as float32, shaped [rows, cols] like a PyTorch weight."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    try:
        data = gguf_dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        kind = GGMLQuantizationType(tensor.tensor_type).name
        raise UnsupportedModelError(
            f"GGUF tensor {tensor.name} uses quantisation {kind}, which gguf cannot dequantise"
        ) from e
    shape = tuple(reversed([int(n) for n in tensor.shape]))  # GGUF lists dims innermost first
    return torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))  # a writable copy


def load_gguf(path: Path, dtype: torch.dtype) -> Checkpoint:
    """Config, weights (in ``dtype``), tokenizer and fingerprint of a GGUF file."""
    reader = open_gguf(path)
    meta = read_metadata(reader)
    arch, permuted = gguf_architecture(meta, path)
    by_name = {t.name: t for t in reader.tensors}
    rope_factors = dequantize(by_name["rope_freqs.weight"]) if "rope_freqs.weight" in by_name else None
    config = model_config(meta, arch, rope_factors)
    weights = {}
    for name, tensor in by_name.items():
        target = hf_name(name)
        if target is None:
            continue
        w = dequantize(tensor)
        if permuted and target.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute_rope_rows(w, config.num_heads)
        elif permuted and target.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute_rope_rows(w, config.num_kv_heads)
        weights[target] = w.to(dtype)
    config = _with_tied_embeddings(config, "lm_head.weight" not in weights)
    tokenizer = Tokenizer.from_gguf_metadata(meta) if "tokenizer.ggml.model" in meta else None
    return Checkpoint(config, weights, tokenizer, fingerprint_files([path]))


def _with_tied_embeddings(config: ModelConfig, tied: bool) -> ModelConfig:
    return replace(config, tie_word_embeddings=tied)
