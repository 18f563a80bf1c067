"""Attention over paged KV: write the new K/V into their slots, then attend over pages.

A step's tokens are flattened into one row per token (``T`` rows). Every sequence's chunk
is either a *decode* (one new token) or a *prefill* chunk (several tokens, after zero or
more tokens already in the cache: a prefix-cache hit or earlier chunks). Both read K/V
back from the pages, so a cold run, a prefix hit and a chunked prefill compute the same
thing the same way. One backend per device:

- CPU: decodes are batched, their pages gathered into [B, kv_heads, S, head_dim], padded
  to the longest context and masked, for one ``scaled_dot_product_attention`` call. A cold
  prompt uses PyTorch's fused causal kernel in the dtypes where that measured faster;
  otherwise a prefill chunk runs ``QUERY_BLOCK`` queries at a time, each block multiplying
  only the keys it can see.
- CUDA: a cold prompt uses the fused causal kernel (flash); decodes and warm prefill chunks
  read the pages directly in one Triton kernel (``triton_kernels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

QUERY_BLOCK = 256
# Dtypes whose cold prefill uses PyTorch's fused causal kernel on a CPU: faster than the
# blocked path in float32, slower in bfloat16 (``kvtier bench engine`` shows both).
FUSED_CAUSAL_DTYPES = (torch.float32, torch.float16)


@dataclass(frozen=True)
class PrefillChunk:
    """Rows ``[q_start, q_start + q_len)`` of the step attend to ``ctx_len`` cached tokens.

    The chunk's queries are the last ``q_len`` of those ``ctx_len`` positions; its block
    table is row ``index`` of ``AttentionMetadata.block_tables``.
    """

    q_start: int
    q_len: int
    ctx_len: int
    index: int

    @property
    def cold(self) -> bool:
        """Nothing cached before the chunk: plain causal attention over its own rows."""
        return self.ctx_len == self.q_len


@dataclass(frozen=True)
class AttentionMetadata:
    """Where a step's rows go in the pages and what each chunk attends to.

    Chunks ``0 .. num_decodes - 1`` are decodes (rows ``0 .. num_decodes - 1``, one each);
    the rest are ``prefills``. Tensors live on the model's device; ints are host values.
    """

    slot_blocks: torch.Tensor  # [T] page of each row's K/V
    slot_offsets: torch.Tensor  # [T] its slot in the page
    q_starts: torch.Tensor  # [N] per chunk
    q_lens: torch.Tensor  # [N]
    ctx_lens: torch.Tensor  # [N]
    block_tables: torch.Tensor  # [N, W] pages of each chunk's context, padded with page 0
    paged_chunks: torch.Tensor  # [M] the chunks that read cached K/V: decodes, warm prefills
    num_decodes: int
    decode_width: int  # pages of the longest decode context
    prefills: tuple[PrefillChunk, ...]
    max_paged_q_len: int  # the longest q_len among paged_chunks


def write_kv(
    k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    meta: AttentionMetadata,
) -> None:
    """Store the step's K/V. caches: [num_blocks, bs, H, D] (strided); k, v: [T, H, D]."""
    k_cache[meta.slot_blocks, meta.slot_offsets] = k
    v_cache[meta.slot_blocks, meta.slot_offsets] = v


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last ``n`` positions over all ``S``.

    q: [n, Hq, D]; k, v: [S, Hkv, D] with S >= n. Query i sits at position S - n + i and
    sees keys 0..S-n+i. Returns [n, Hq, D].

    Scores stay in the model dtype (the product rounds to it anyway) and the softmax
    accumulates in float32 inside the kernel: converting [Hq, n, S] scores to float32 and
    back cost more than the products themselves in bfloat16. (PyTorch's
    ``scaled_dot_product_attention`` with the explicit mask an offset needs is several
    times slower than this on a CPU; without a prefix, ``causal_attention`` uses it.)
    """
    n, num_heads, d = q.shape
    s, num_kv, _ = k.shape
    group = num_heads // num_kv
    offset = s - n
    qg = (q * (1.0 / math.sqrt(d))).view(n, num_kv, group, d).permute(1, 2, 0, 3)  # [Hkv, G, n, D]
    kt = k.permute(1, 2, 0).contiguous()  # [Hkv, D, S]
    vh = v.transpose(0, 1).contiguous()  # [Hkv, S, D]
    out = torch.empty(num_kv, group, n, d, dtype=q.dtype, device=q.device)
    for start in range(0, n, QUERY_BLOCK):
        end = min(n, start + QUERY_BLOCK)
        rows, keys = end - start, offset + end
        qb = qg[:, :, start:end].reshape(num_kv, group * rows, d)  # [Hkv, G*rows, D]
        scores = torch.matmul(qb, kt[:, :, :keys]).view(num_kv, group, rows, keys)
        future = torch.ones(rows, rows, dtype=torch.bool, device=q.device).triu_(1)  # the diagonal block
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
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata
) -> torch.Tensor:
    """The decodes' rows, gathered and padded. q: [B, Hq, D]; caches: [num_blocks, bs, Hkv, D].
    Returns [B, Hq, D]."""
    b, num_heads, d = q.shape
    num_kv, bs = k_cache.shape[2], k_cache.shape[1]
    tables = meta.block_tables[:b, : meta.decode_width]
    # [B, W, bs, Hkv, D] -> [B, Hkv, S, D]
    k = k_cache[tables].flatten(1, 2).transpose(1, 2)
    v = v_cache[tables].flatten(1, 2).transpose(1, 2)
    attended = torch.arange(meta.decode_width * bs, device=q.device) < meta.ctx_lens[:b, None]  # [B, S]
    qg = q.view(b, num_kv, num_heads // num_kv, d)  # a KV group's heads as query rows
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=attended[:, None, None, :])  # [B, Hkv, G, D]
    return out.reshape(b, num_heads, d)


def _attend_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor) -> None:
    """The CPU's measured fast paths: fused causal for cold prompts in float32, blocked
    prefill over gathered pages otherwise, decodes batched over gathered pages."""
    heads, d = k_cache.shape[2:]
    for c in meta.prefills:
        rows = slice(c.q_start, c.q_start + c.q_len)
        if c.cold and q.dtype in FUSED_CAUSAL_DTYPES:
            out[rows] = causal_attention(q[rows], k[rows], v[rows])
            continue
        pages = meta.block_tables[c.index, : -(-c.ctx_len // k_cache.shape[1])]
        ctx_k = k_cache[pages].reshape(-1, heads, d)[: c.ctx_len]  # [S, Hkv, D]
        ctx_v = v_cache[pages].reshape(-1, heads, d)[: c.ctx_len]
        out[rows] = prefill_attention(q[rows], ctx_k, ctx_v)
    if meta.num_decodes:
        b = meta.num_decodes
        out[:b] = decode_attention(q[:b], k_cache, v_cache, meta)


def _attend_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, meta: AttentionMetadata, out: torch.Tensor) -> None:
    """Cold prompts through the fused causal kernel (flash); every chunk that reads
    cached K/V (decodes, prefill after a hit or an earlier chunk) through one launch of
    the paged Triton kernel, straight from the pages."""
    from engine.model.triton_kernels import paged_attention_triton

    for c in meta.prefills:
        if c.cold:
            rows = slice(c.q_start, c.q_start + c.q_len)
            out[rows] = causal_attention(q[rows], k[rows], v[rows])
    if meta.max_paged_q_len:
        paged_attention_triton(
            q, k_cache, v_cache, out, chunks=meta.paged_chunks, q_starts=meta.q_starts, q_lens=meta.q_lens,
            ctx_lens=meta.ctx_lens, block_tables=meta.block_tables, max_q_len=meta.max_paged_q_len)


def paged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
) -> torch.Tensor:
    """Attention of the step's rows. q: [T, Hq, D]; k, v: [T, Hkv, D]; cache: one layer's
    (k, v) pages, each [num_blocks, bs, Hkv, D]. Returns [T, Hq, D]."""
    k_cache, v_cache = cache
    write_kv(k_cache, v_cache, k, v, meta)
    out = torch.empty_like(q)
    attend = _attend_cuda if q.is_cuda else _attend_cpu
    attend(q, k, v, k_cache=k_cache, v_cache=v_cache, meta=meta, out=out)
    return out
