"""Pick the next token of each sequence from its logits."""

from __future__ import annotations

import torch

from engine.runtime.sampling_params import SamplingParams


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits: [V]. Everything below the k-th largest becomes -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[-1]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """logits: [V]. Keep the smallest set of top tokens whose probability reaches ``p``."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a token if the tokens before it already reach p (the first is always kept).
    drop = (torch.cumsum(probs, dim=-1) - probs) >= p
    return logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))


def sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits: [V] float32."""
    if params.greedy:
        return int(torch.argmax(logits))
    scaled = filter_top_p(filter_top_k(logits / params.temperature, params.top_k), params.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> list[int]:
    """logits: [B, V] float32 -> one token per row.

    Greedy rows share one argmax; sampled rows draw from their own generator, so a
    seeded request gets the same tokens in any batch.
    """
    tokens = torch.argmax(logits, dim=-1).tolist()
    for i, p in enumerate(params):
        if not p.greedy:
            tokens[i] = sample_one(logits[i], p, generators[i])
    return tokens
