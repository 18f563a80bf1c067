"""Turn a step's scheduled chunks into model inputs, and run the model on them.

Rows are the chunks' tokens one after another; each row's page slot comes from its
sequence's block table (``slot = block_table[pos // bs] * bs + pos % bs``). Logits are
taken only at the last row of chunks that reach their sequence's end (a prefill chunk
in the middle of a prompt samples nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.model.attention import AttentionMetadata, DecodeBatch, PrefillChunk
from engine.model.kv_cache import KVCache
from engine.model.model import LlamaModel
from engine.runtime.scheduler import ScheduledChunk


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    meta: AttentionMetadata
    logit_rows: torch.Tensor  # [B] int64


def _decode_batch(rows: list[int], tables: list[list[int]], ctx_lens: list[int], bs: int) -> DecodeBatch:
    width = max(len(t) for t in tables)
    padded = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64)
    attended = torch.arange(width * bs)[None, :] < torch.tensor(ctx_lens)[:, None]  # [B, S]
    return DecodeBatch(torch.tensor(rows), padded, attended[:, None, None, :])


def prepare(chunks: list[ScheduledChunk], block_size: int) -> StepInputs:
    """Model inputs of one step."""
    ids, positions, slots, logit_rows = [], [], [], []
    prefills, decode_rows, decode_tables, decode_ctx = [], [], [], []
    row = 0
    for c in chunks:
        seq, end = c.seq, c.start + c.num_tokens
        num_blocks = -(-end // block_size)
        table = seq.block_table[:num_blocks]
        pos = torch.arange(c.start, end)
        ids.append(torch.tensor(seq.token_ids[c.start : end]))
        positions.append(pos)
        slots.append(torch.tensor(table)[pos // block_size] * block_size + pos % block_size)
        if c.num_tokens == 1:
            decode_rows.append(row)
            decode_tables.append(table)
            decode_ctx.append(end)
        else:
            prefills.append(PrefillChunk(row, c.num_tokens, end, torch.tensor(table)))
        row += c.num_tokens
        if c.samples:
            logit_rows.append(row - 1)
    decode = _decode_batch(decode_rows, decode_tables, decode_ctx, block_size) if decode_rows else None
    meta = AttentionMetadata(torch.cat(slots), tuple(prefills), decode)
    return StepInputs(torch.cat(ids), torch.cat(positions), meta, torch.tensor(logit_rows, dtype=torch.int64))


class ModelRunner:
    """Runs the model on one step's chunks. Not thread-safe: one step at a time."""

    def __init__(self, model: LlamaModel, kv_cache: KVCache):
        self.model = model
        self.kv_cache = kv_cache

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Logits [B, vocab] float32 of ``inputs.logit_rows``."""
        with torch.inference_mode():
            return self.model.forward(
                inputs.input_ids, inputs.positions, inputs.meta, self.kv_cache, inputs.logit_rows
            )

    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Logits [B, vocab] of the chunks that sample, in chunk order."""
        return self.forward(prepare(chunks, self.kv_cache.block_size))
