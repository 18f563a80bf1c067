"""What a loader hands the engine: hyperparameters, weights, tokenizer and fingerprint.

Weights use the Hugging Face Llama names (``model.layers.0.self_attn.q_proj.weight``) and
the Hugging Face rotary layout (``rotate_half``), whatever file they came from, so the
model has one convention to follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import xxhash

if TYPE_CHECKING:
    import torch

    from engine.config import ModelConfig
    from engine.model.tokenizer import Tokenizer

_CHUNK = 1 << 23


@dataclass(frozen=True)
class Checkpoint:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer | None
    # Fingerprint of the weights files: the ``model_id`` that goes into block keys.
    model_id: str


def fingerprint_files(paths: list[Path]) -> str:
    """``xxh3_128:<hex>`` over the bytes of ``paths`` in order."""
    h = xxhash.xxh3_128()
    for path in paths:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return f"xxh3_128:{h.hexdigest()}"
