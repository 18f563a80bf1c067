"""Pick the next token of each sequence from its logits: first the request's biases and
penalties (``adjust_logits``), then temperature, top-k, top-p and a draw (``sample``)."""

from __future__ import annotations

from collections.abc import Collection

import torch

from engine.runtime.sampling_params import SamplingParams
from engine.runtime.sequence import Sequence


def adjust_logits(logits: torch.Tensor, seqs: list[Sequence], end_token_ids: Collection[int]) -> torch.Tensor:
    """logits: [B, V] -> the logits the sampler picks from, with each row's ``logit_bias``,
    repetition, frequency and presence penalties and ``min_tokens`` mask applied.

    Tensor ops on the logits' device (a bincount of the row's tokens, not a loop over the
    vocabulary). ``logits`` is left as it is (logprobs are reported from it); rows that
    ask for nothing are not copied.
    """
    rows = [i for i, s in enumerate(seqs) if s.params.adjusts_logits]
    if not rows:
        return logits
    logits = logits.clone()
    for i in rows:
        logits[i] = _adjust_row(logits[i], seqs[i], end_token_ids)
    return logits


def _adjust_row(row: torch.Tensor, seq: Sequence, end_token_ids: Collection[int]) -> torch.Tensor:
    """row: [V] float32."""
    p, vocab, device = seq.params, row.shape[-1], row.device
    if p.logit_bias:
        ids, bias = zip(*p.logit_bias, strict=True)
        bias = torch.tensor(bias, device=device, dtype=row.dtype)
        row = row.index_add(0, torch.tensor(ids, device=device), bias)
    if p.repetition_penalty != 1:
        seen = torch.bincount(torch.tensor(seq.token_ids, device=device), minlength=vocab) > 0  # [V]
        penalised = torch.where(row > 0, row / p.repetition_penalty, row * p.repetition_penalty)
        row = torch.where(seen, penalised, row)
    if (p.frequency_penalty or p.presence_penalty) and seq.num_output_tokens:
        out = torch.tensor(seq.output_token_ids, device=device)
        counts = torch.bincount(out, minlength=vocab).to(row.dtype)  # [V]
        row = row - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).to(row.dtype)
    if seq.num_output_tokens < p.min_tokens:
        ends = [t for t in (*end_token_ids, *p.stop_token_ids) if t < vocab]
        if ends:
            row = row.index_fill(0, torch.tensor(ends, device=device), float("-inf"))
    return row


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
