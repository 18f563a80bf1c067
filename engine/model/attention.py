"""Attention over paged KV: write the new K/V into their slots, then attend over pages.

A step's tokens are flattened into one row per token (``T`` rows). Every sequence's chunk
is either a *decode* (one new token) or a *prefill* chunk (several tokens, after zero or
more tokens already in the cache: a prefix-cache hit or earlier chunks). Both read K/V
back from the pages, so a cold run, a prefix hit and a chunked prefill compute the same
thing the same way.

- Decodes are batched: their pages are gathered into [B, kv_heads, S, head_dim], padded
  to the longest context and masked, and one ``scaled_dot_product_attention`` call serves
  all of them, with the query heads of a KV group laid out as query rows.
- A prefill chunk with nothing cached before it (a cold prompt) uses PyTorch's fused causal
  kernel in the dtypes where it measured faster; otherwise, and after cached tokens (a
  prefix hit, a later chunk), it runs block by block over its queries (``QUERY_BLOCK``
  rows at a time), so each block only multiplies the keys it can see (causal, offset by
  the cached tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

QUERY_BLOCK = 256
# Dtypes whose cold prefill uses PyTorch's fused causal kernel. Measured end to end on this
# project's CPU (SmolLM2, ``kvtier bench engine``, 2,048 tokens): float32 prefill went from
# 449 to 540 tokens/s with it, bfloat16 from 1,021 down to 769, so bfloat16 keeps the
# blocked path.
FUSED_CAUSAL_DTYPES = (torch.float32, torch.float16)


@dataclass(frozen=True)
class PrefillChunk:
    """Rows ``[q_start, q_start + q_len)`` of the step attend to ``ctx_len`` cached tokens.

    The chunk's queries are the last ``q_len`` of those ``ctx_len`` positions.
    """

    q_start: int
    q_len: int
    ctx_len: int
    block_ids: torch.Tensor  # [ceil(ctx_len / block_size)] int64


@dataclass(frozen=True)
class DecodeBatch:
    """One query row per sequence; each attends to its first ``ctx_lens[b]`` cached tokens."""

    rows: torch.Tensor  # [B] int64: the step's token rows of these queries
    block_tables: torch.Tensor  # [B, max_blocks] int64, padded with block 0
    mask: torch.Tensor  # [B, 1, 1, max_blocks * block_size] bool: True where attended


@dataclass(frozen=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] int64: page slot (block_id * block_size + offset) of each row
    prefills: tuple[PrefillChunk, ...]
    decode: DecodeBatch | None


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store the step's K/V. caches: [num_blocks, bs, H, D]; k, v: [T, H, D]."""
    k_cache.view(-1, *k.shape[1:]).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, *v.shape[1:]).index_copy_(0, slot_mapping, v)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last ``n`` positions over all ``S``.

    q: [n, Hq, D]; k, v: [S, Hkv, D] with S >= n. Query i sits at position S - n + i and
    sees keys 0..S-n+i. Returns [n, Hq, D].

    Scores stay in the model dtype (the product rounds to it anyway) and the softmax
    accumulates in float32 inside the kernel: converting [Hq, n, S] scores to float32 and
    back cost more than the products themselves in bfloat16. (PyTorch's
    ``scaled_dot_product_attention`` with the explicit mask an offset needs measured 5-10x
    slower than this at 2,048 tokens; without a prefix, ``causal_attention`` uses it.)
    """
    n, num_heads, d = q.shape
    s, num_kv, _ = k.shape
    group = num_heads // num_kv
    offset = s - n
    qg = (q * (1.0 / math.sqrt(d))).view(n, num_kv, group, d).permute(1, 2, 0, 3)  # [Hkv, G, n, D]
    kt = k.permute(1, 2, 0).contiguous()  # [Hkv, D, S]
    vh = v.transpose(0, 1).contiguous()  # [Hkv, S, D]
    out = torch.empty(num_kv, group, n, d, dtype=q.dtype)
    for start in range(0, n, QUERY_BLOCK):
        end = min(n, start + QUERY_BLOCK)
        rows, keys = end - start, offset + end
        qb = qg[:, :, start:end].reshape(num_kv, group * rows, d)  # [Hkv, G*rows, D]
        scores = torch.matmul(qb, kt[:, :, :keys]).view(num_kv, group, rows, keys)
        future = torch.ones(rows, rows, dtype=torch.bool).triu_(1)  # the diagonal block
        scores[..., keys - rows :].masked_fill_(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        ob = torch.matmul(probs.view(num_kv, group * rows, keys), vh[:, :keys])
        out[:, :, start:end] = ob.view(num_kv, group, rows, d)
    return out.permute(2, 0, 1, 3).reshape(n, num_heads, d)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of a whole sequence (no cached prefix). q: [n, Hq, D]; k, v:
    [n, Hkv, D]. Returns [n, Hq, D].

    PyTorch's fused kernel with ``is_causal`` (no mask tensor). It only fits when queries
    and keys start together: ``is_causal`` aligns the mask to the top left, which is wrong
    once a prefix is cached.
    """
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))  # [1, H, n, D]
    out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    return out.squeeze(0).transpose(0, 1)  # [n, Hq, D]


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: DecodeBatch
) -> torch.Tensor:
    """q: [B, Hq, D]; caches: [num_blocks, bs, Hkv, D]. Returns [B, Hq, D]."""
    b, num_heads, d = q.shape
    num_kv = k_cache.shape[2]
    # [B, max_blocks, bs, Hkv, D] -> [B, Hkv, S, D]
    k = k_cache[batch.block_tables].flatten(1, 2).transpose(1, 2)
    v = v_cache[batch.block_tables].flatten(1, 2).transpose(1, 2)
    qg = q.view(b, num_kv, num_heads // num_kv, d)  # a KV group's heads as query rows
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=batch.mask)  # [B, Hkv, G, D]
    return out.reshape(b, num_heads, d)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
) -> torch.Tensor:
    """Attention of the step's rows. q: [T, Hq, D]; k, v: [T, Hkv, D]; cache: one layer's
    (k, v) pages, each [num_blocks, bs, Hkv, D]. Returns [T, Hq, D]."""
    k_cache, v_cache = cache
    write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
    out = torch.empty_like(q)
    heads, d = k_cache.shape[2:]
    for c in meta.prefills:
        rows = slice(c.q_start, c.q_start + c.q_len)
        if c.ctx_len == c.q_len and q.dtype in FUSED_CAUSAL_DTYPES:  # nothing cached before
            out[rows] = causal_attention(q[rows], k[rows], v[rows])
            continue
        ctx_k = k_cache[c.block_ids].view(-1, heads, d)[: c.ctx_len]  # [S, Hkv, D]
        ctx_v = v_cache[c.block_ids].view(-1, heads, d)[: c.ctx_len]
        out[rows] = prefill_attention(q[rows], ctx_k, ctx_v)
    if meta.decode is not None:
        rows = meta.decode.rows
        out[rows] = decode_attention(q[rows], k_cache, v_cache, meta.decode)
    return out
