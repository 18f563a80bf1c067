"""Rotary position embeddings in the Hugging Face layout (``rotate_half``).

Pair ``i`` of a head is ``(x[i], x[i + d/2])``, rotated by ``position * inv_freq[i]``.
The cos/sin table is computed once in float32, as transformers does per forward, and
cast to the model dtype; looking rows up by position costs one gather per step.
"""

from __future__ import annotations

import math

import torch

from engine.config import ModelConfig, RopeScaling


def llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1's frequency-dependent stretch: long wavelengths / factor, short ones kept."""
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """inv_freq: [head_dim / 2] float32."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    if config.rope_freq_factors is not None:
        inv_freq = inv_freq / torch.tensor(config.rope_freq_factors, dtype=torch.float32)
    scaling = config.rope_scaling
    if scaling is not None and scaling.kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling is not None and scaling.kind == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    return inv_freq


def rope_table(config: ModelConfig, max_position: int, dtype: torch.dtype) -> torch.Tensor:
    """cos_sin: [max_position, 2, head_dim], the cos and sin of every position."""
    positions = torch.arange(max_position, dtype=torch.float32)
    freqs = positions[:, None] * inverse_frequencies(config)[None, :]  # [P, d/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [P, d]
    return torch.stack((emb.cos(), emb.sin()), dim=1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, d]; cos, sin: [T, 1, d]. Returns x rotated, same shape and dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
