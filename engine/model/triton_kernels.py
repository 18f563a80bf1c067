"""The CUDA backend's Triton kernels: paged attention, residual add + RMSNorm, and RoPE.

Each replaces a chain of small PyTorch kernels whose launches, not their arithmetic, set a
decode step's time on a GPU. All are checked on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, float32) and on a GPU by ``tests/engine/test_gpu.py``.

**Paged attention** (``paged_attention_triton``): attention of query rows over paged K/V.

Serves every chunk that reads the KV pages: a decode (one query row) and a prefill chunk
after cached tokens. A chunk's ``q_len`` queries are the last ``q_len`` of its
``ctx_len`` positions; query ``i`` sees keys ``0 .. ctx_len - q_len + i``.

One program computes ``BLOCK_M`` rows of one chunk and one KV head: the rows are
(query token, query head of the KV group) pairs, so the group's heads share each K/V
tile they load (grouped-query attention at the cost of one KV head). Keys are walked
``BLOCK_N`` tokens at a time through the chunk's block table, with an online softmax in
float32. No gather, no padding to the longest context, no mask tensor. A chunk with
``q_len == 0`` is padding (a CUDA graph's spare slot) and computes nothing.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # keys per inner step
MAX_SPLITS = 16  # key ranges a query block's context is cut into, at most


@triton.jit
def _paged_attention_kernel(  # noqa: PLR0915, PLR0917 (a kernel is one function; Triton passes by position)
    q_ptr, k_ptr, v_ptr, out_ptr,  # q, out: [T, Hq, D]; k, v: [num_blocks, bs, Hkv, D] (strided)
    part_ptr, ml_ptr,  # with splits: acc [S, T, Hq, D] and (max, sum) [S, T, Hq, 2], float32
    chunks_ptr, q_starts_ptr, q_lens_ptr, ctx_lens_ptr, tables_ptr,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_table,
    num_rows, scale, head_dim, block_size,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLITS: tl.constexpr, PRECISION: tl.constexpr,
):
    chunk = tl.load(chunks_ptr + tl.program_id(0))
    kv_head = tl.program_id(1)
    split = tl.program_id(2) % SPLITS
    q_start = tl.load(q_starts_ptr + chunk)
    q_len = tl.load(q_lens_ptr + chunk)
    ctx_len = tl.load(ctx_lens_ptr + chunk)
    rows_per_block: tl.constexpr = BLOCK_M // GROUP
    first_token = (tl.program_id(2) // SPLITS) * rows_per_block
    if first_token >= q_len:
        return

    offs_m = tl.arange(0, BLOCK_M)
    token = first_token + offs_m // GROUP  # the query's index in the chunk
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = (offs_m < rows_per_block * GROUP) & (token < q_len)  # BLOCK_M may not divide by GROUP
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q_rows = (q_start + token).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

    q_pos = ctx_len - q_len + token  # absolute position of each query row
    # The keys any row of this program sees, cut into SPLITS ranges of whole key blocks.
    last_key = tl.minimum(ctx_len, ctx_len - q_len + first_token + rows_per_block)
    per_split = tl.cdiv(tl.cdiv(last_key, BLOCK_N), SPLITS) * BLOCK_N
    key_start = split * per_split
    key_end = tl.minimum(last_key, key_start + per_split)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    table = tables_ptr + chunk.to(tl.int64) * stride_table
    for start in range(key_start, key_end, BLOCK_N):
        key_pos = start + offs_n
        key_ok = key_pos < key_end
        page = tl.load(table + key_pos // block_size, mask=key_ok, other=0).to(tl.int64)
        slot = key_pos % block_size
        k_off = page * stride_kb + slot * stride_kt + kv_head * stride_kh
        v_off = page * stride_vb + slot * stride_vt + kv_head * stride_vh
        kv_mask = key_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + k_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # [BLOCK_N, BLOCK_D]
        v = tl.load(v_ptr + v_off[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale  # [BLOCK_M, BLOCK_N]
        visible = (key_pos[None, :] <= q_pos[:, None]) & key_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        m_i = m_new
    mask = row_ok[:, None] & d_ok[None, :]
    if SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)
    else:  # partial results, combined by _combine_splits_kernel
        cell = (split * num_rows + q_rows) * (GROUP * tl.num_programs(1)) + head  # (split, row, head)
        tl.store(part_ptr + cell[:, None] * head_dim + offs_d[None, :], acc, mask=mask)
        tl.store(ml_ptr + cell * 2, m_i, mask=row_ok)
        tl.store(ml_ptr + cell * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _combine_splits_kernel(  # noqa: PLR0917
    out_ptr, part_ptr, ml_ptr, chunks_ptr, q_starts_ptr, q_lens_ptr,
    stride_ot, stride_oh, num_rows, head_dim,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
):
    """out = sum_s exp(m_s - m) acc_s / sum_s exp(m_s - m) l_s, over the key ranges' partials."""
    chunk = tl.load(chunks_ptr + tl.program_id(0))
    kv_head = tl.program_id(1)
    q_start = tl.load(q_starts_ptr + chunk)
    q_len = tl.load(q_lens_ptr + chunk)
    rows_per_block: tl.constexpr = BLOCK_M // GROUP
    first_token = tl.program_id(2) * rows_per_block
    if first_token >= q_len:
        return
    offs_m = tl.arange(0, BLOCK_M)
    token = first_token + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = (offs_m < rows_per_block * GROUP) & (token < q_len)
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (offs_d < head_dim)[None, :]
    q_rows = (q_start + token).to(tl.int64)
    heads = GROUP * tl.num_programs(1)
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in tl.static_range(SPLITS):
        m = tl.maximum(m, tl.load(ml_ptr + ((s * num_rows + q_rows) * heads + head) * 2, mask=row_ok,
                                  other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in tl.static_range(SPLITS):
        cell = (s * num_rows + q_rows) * heads + head
        m_s = tl.load(ml_ptr + cell * 2, mask=row_ok, other=float("-inf"))
        w = tl.exp(m_s - m_safe)  # 0 for a range that saw no key
        total += w * tl.load(ml_ptr + cell * 2 + 1, mask=row_ok, other=0.0)
        part = tl.load(part_ptr + cell[:, None] * head_dim + offs_d[None, :], mask=mask, other=0.0)
        acc += tl.where(w[:, None] > 0.0, part, 0.0) * w[:, None]
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


def num_splits(num_programs: int, device: torch.device) -> int:
    """Key ranges per query block: enough programs to keep every SM busy (about four each),
    so a long context with few queries (a decode, a short prefill after a hit) is read in
    parallel rather than by a handful of SMs."""
    if device.type != "cuda":
        return 1
    return max(1, min(MAX_SPLITS, 4 * _num_sms(device.index) // max(num_programs, 1)))


@functools.cache
def _num_sms(index: int | None) -> int:
    return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()
                                            ).multi_processor_count


def paged_attention_triton(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor, *,
    chunks: torch.Tensor, q_starts: torch.Tensor, q_lens: torch.Tensor, ctx_lens: torch.Tensor,
    block_tables: torch.Tensor, max_q_len: int, splits: int | None = None,
) -> None:
    """Write into ``out`` the attention of the rows of ``chunks`` (indices into the per-chunk
    arrays). q, out: [T, Hq, D]; k_cache, v_cache: [num_blocks, bs, Hkv, D], each token's
    heads contiguous; q_starts, q_lens, ctx_lens: [N]; block_tables: [N, W]. ``max_q_len``
    bounds the chunks' ``q_len`` (it sizes the grid); ``splits``: key ranges per query block
    (default: ``num_splits``)."""
    num_rows, num_heads, head_dim = q.shape
    num_kv = k_cache.shape[2]
    group = num_heads // num_kv
    # Rows of a program: at least 16 (the smallest tile a matrix unit takes), a decode's
    # group of heads when that is all there is, 64 for prefill chunks.
    block_m = max(16, triton.next_power_of_2(group * (1 if max_q_len == 1 else 16)))
    grid = (chunks.numel(), num_kv, triton.cdiv(max_q_len, block_m // group))
    if splits is None:
        splits = num_splits(grid[0] * grid[1] * grid[2], q.device)
    part = ml = out  # unused without splits
    if splits > 1:
        part = torch.empty(splits, num_rows, num_heads, head_dim, dtype=torch.float32, device=q.device)
        ml = torch.empty(splits, num_rows, num_heads, 2, dtype=torch.float32, device=q.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    _paged_attention_kernel[(*grid[:2], grid[2] * splits)](
        q, k_cache, v_cache, out, part, ml, chunks, q_starts, q_lens, ctx_lens, block_tables,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), block_tables.stride(0),
        num_rows, head_dim**-0.5, head_dim, k_cache.shape[1],
        GROUP=group, BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d, SPLITS=splits,
        # float32 products in full precision (TF32 would cost the CPU-matching logits).
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    if splits > 1:
        _combine_splits_kernel[grid](
            out, part, ml, chunks, q_starts, q_lens, out.stride(0), out.stride(1), num_rows, head_dim,
            GROUP=group, BLOCK_M=block_m, BLOCK_D=block_d, SPLITS=splits,
        )


@triton.jit
def _residual_rms_norm_kernel(  # noqa: PLR0917
    h_ptr, delta_ptr, w_ptr, x_ptr, n_cols, eps, stride_h, stride_delta, stride_x,
    HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    ok = cols < n_cols
    h = tl.load(h_ptr + row * stride_h + cols, mask=ok, other=0.0)
    if HAS_DELTA:
        h += tl.load(delta_ptr + row * stride_delta + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(h_ptr + row * stride_h + cols, h, mask=ok)
    normed = h * tl.rsqrt(tl.sum(h * h, 0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0)
    tl.store(x_ptr + row * stride_x + cols, w * normed.to(w.dtype), mask=ok)


def residual_rms_norm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                      eps: float) -> torch.Tensor:
    """``h += delta`` in place (if given), then RMSNorm of ``h`` in the weight's dtype.

    h: [T, hidden] float32 (the residual stream); delta: [T, hidden]; weight: [hidden].
    As transformers computes it: normalized in float32, cast, then times the weight."""
    x = torch.empty(h.shape, dtype=weight.dtype, device=h.device)
    block = triton.next_power_of_2(h.shape[1])
    _residual_rms_norm_kernel[(h.shape[0],)](
        h, delta if delta is not None else h, weight, x, h.shape[1], eps,
        h.stride(0), (delta if delta is not None else h).stride(0), x.stride(0),
        HAS_DELTA=delta is not None, BLOCK=block, num_warps=max(1, min(16, block // 256)),
    )
    return x


@triton.jit
def _rope_kernel(  # noqa: PLR0917
    x_ptr, cos_sin_ptr, positions_ptr, num_heads, stride_xt, stride_xh, stride_p, stride_cs,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token)
    d = tl.arange(0, HALF)
    cos = tl.load(cos_sin_ptr + pos * stride_p + d).to(tl.float32)  # cos[d] == cos[d + HALF]
    sin = tl.load(cos_sin_ptr + pos * stride_p + stride_cs + d).to(tl.float32)
    heads = tl.arange(0, BLOCK_H)
    ok = (heads < num_heads)[:, None]
    first = x_ptr + token * stride_xt + heads[:, None] * stride_xh + d[None, :]  # [BLOCK_H, HALF]
    x1 = tl.load(first, mask=ok, other=0.0)
    x2 = tl.load(first + HALF, mask=ok, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(first, (a * cos[None, :] - b * sin[None, :]).to(x1.dtype), mask=ok)
    tl.store(first + HALF, (b * cos[None, :] + a * sin[None, :]).to(x1.dtype), mask=ok)


def rope_(x: torch.Tensor, cos_sin: torch.Tensor, positions: torch.Tensor) -> None:
    """Rotate ``x`` in place. x: [T, heads, D] (a token's heads may be a strided view, each
    head's D contiguous); cos_sin: [P, 2, D] (``rope.rope_table``); positions: [T]."""
    half = x.shape[2] // 2
    _rope_kernel[(x.shape[0],)](
        x, cos_sin, positions, x.shape[1], x.stride(0), x.stride(1), cos_sin.stride(0), cos_sin.stride(1),
        HALF=half, BLOCK_H=triton.next_power_of_2(x.shape[1]),
    )
