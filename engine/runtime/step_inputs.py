"""A step's scheduled chunks as model inputs.

Rows are the chunks' tokens one after another, decodes first; each row's page slot comes
from its sequence's block table (``block_table[pos // bs]``, offset ``pos % bs``). Logits
are taken only at the last row of chunks that reach their sequence's end (a prefill chunk
in the middle of a prompt samples nothing).

Every integer input of a step is laid out in one int64 host buffer and reaches the device
in one copy (from pinned memory on a GPU, without waiting); the tensors the model reads
are views into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.model.attention import AttentionMetadata, PrefillChunk
from engine.runtime.scheduler import ScheduledChunk


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    logit_rows: torch.Tensor  # [B] int64


@dataclass(frozen=True)
class StepLayout:
    """The host-side shape of a step: segment sizes of its buffer and the metadata's ints."""

    num_rows: int  # T
    num_chunks: int  # N
    width: int  # W, pages per block-table row
    num_paged: int  # M
    num_logits: int  # B
    num_decodes: int
    decode_width: int
    prefills: tuple[PrefillChunk, ...]
    max_paged_q_len: int

    @property
    def size(self) -> int:
        t, n = self.num_rows, self.num_chunks
        return 4 * t + 3 * n + self.num_paged + self.num_logits + n * self.width


@dataclass(frozen=True)
class Padding:
    """A CUDA graph's fixed step shape: ``rows`` token rows, ``chunks`` chunks, each chunk
    given ``width`` pages, ``max_q_len`` sizing the attention grid.

    Spare rows write their K/V into ``scratch_block`` and belong to no chunk; spare chunks
    have no queries (attention skips them); their logit rows repeat row 0."""

    rows: int
    chunks: int
    width: int
    max_q_len: int
    scratch_block: int


def host_inputs(
    chunks: list[ScheduledChunk], block_size: int, padding: Padding | None = None,
) -> tuple[torch.Tensor, StepLayout]:
    """A step's inputs as one int64 host tensor, and its layout.

    Logit rows are those of the sampling chunks in ``chunks``' order (then, padded, one per
    spare chunk)."""
    decodes = [c for c in chunks if c.num_tokens == 1]
    ordered = decodes + [c for c in chunks if c.num_tokens != 1]
    ids: list[int] = []
    positions: list[int] = []
    blocks: list[int] = []
    offsets: list[int] = []
    q_starts, q_lens, ctx_lens, paged, tables = [], [], [], [], []
    prefills = []
    last_row: dict[int, int] = {}
    row = 0
    for j, c in enumerate(ordered):
        end = c.start + c.num_tokens
        table = c.seq.block_table[: -(-end // block_size)]
        ids += c.seq.token_ids[c.start : end]
        positions += range(c.start, end)
        blocks += [table[p // block_size] for p in range(c.start, end)]
        offsets += [p % block_size for p in range(c.start, end)]
        q_starts.append(row)
        q_lens.append(c.num_tokens)
        ctx_lens.append(end)
        tables.append(table)
        if j >= len(decodes):
            prefills.append(PrefillChunk(row, c.num_tokens, end, j))
        if end > c.num_tokens or c.num_tokens == 1:  # it reads cached K/V
            paged.append(j)
        row += c.num_tokens
        last_row[id(c)] = row - 1
    logit_rows = [last_row[id(c)] for c in chunks if c.samples]
    width, max_q_len = 0, max((q_lens[j] for j in paged), default=0)
    if padding is not None:
        spare_rows = padding.rows - row
        ids += [0] * spare_rows
        positions += [0] * spare_rows
        blocks += [padding.scratch_block] * spare_rows
        offsets += [0] * spare_rows
        row = padding.rows
        for _ in range(len(tables), padding.chunks):
            paged.append(len(tables))
            q_starts.append(0)
            q_lens.append(0)
            ctx_lens.append(0)
            tables.append([])
        logit_rows += [0] * (padding.chunks - len(logit_rows))
        width, max_q_len = padding.width, padding.max_q_len
    width = max([width, *(len(t) for t in tables)])
    num_decodes = len(decodes)
    layout = StepLayout(
        num_rows=row, num_chunks=len(tables), width=width, num_paged=len(paged),
        num_logits=len(logit_rows), num_decodes=num_decodes,
        decode_width=max((len(t) for t in tables[:num_decodes]), default=0),
        prefills=tuple(prefills), max_paged_q_len=max_q_len,
    )
    head = np.array([*ids, *positions, *blocks, *offsets, *q_starts, *q_lens, *ctx_lens, *paged, *logit_rows],
                    dtype=np.int64)
    padded = np.zeros((len(tables), width), dtype=np.int64)  # [N, W]
    for i, table in enumerate(tables):
        padded[i, : len(table)] = table
    return torch.from_numpy(np.concatenate([head, padded.ravel()])), layout


def step_inputs(buffer: torch.Tensor, layout: StepLayout) -> StepInputs:
    """Views of ``buffer`` (``host_inputs``'s tensor, on any device) as the model's inputs."""
    t, n = layout.num_rows, layout.num_chunks
    sizes = [t, t, t, t, n, n, n, layout.num_paged, layout.num_logits, n * layout.width]
    ids, positions, blocks, offsets, q_starts, q_lens, ctx_lens, paged, logit_rows, tables = (
        buffer[: layout.size].split(sizes))
    meta = AttentionMetadata(
        slot_blocks=blocks, slot_offsets=offsets, q_starts=q_starts, q_lens=q_lens, ctx_lens=ctx_lens,
        block_tables=tables.view(n, layout.width), paged_chunks=paged, num_decodes=layout.num_decodes,
        decode_width=layout.decode_width, prefills=layout.prefills, max_paged_q_len=layout.max_paged_q_len,
    )
    return StepInputs(ids, positions, meta, logit_rows)
