"""Decode steps replayed as CUDA graphs: one launch per step instead of one per kernel.

A decode step of a large model launches hundreds of small kernels; on a GPU their launch
overhead, not the arithmetic, sets its time. So at start, for each batch-size bucket, one
decode step is captured as a graph over static input buffers. A step of ``B`` decodes
then fills the smallest bucket ``>= B`` (the extra rows write into the scratch page and
attend to themselves), copies its inputs into that bucket's buffer, and replays.

Steps with a prefill chunk, more decodes than the largest bucket, or a context longer than
``MAX_CONTEXT`` run eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.runtime.scheduler import ScheduledChunk
from engine.runtime.step_inputs import host_inputs, step_inputs

if TYPE_CHECKING:
    from engine.runtime.model_runner import ModelRunner

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MAX_CONTEXT = 8192  # tokens; sizes each bucket's block-table rows


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    buffer: torch.Tensor  # the step's int64 inputs, as host_inputs lays them out
    logits: torch.Tensor  # [bucket, vocab] float32, written by each replay


class DecodeGraphs:
    """The captured decode steps of one ``ModelRunner``, smallest bucket first."""

    def __init__(self, runner: ModelRunner, max_batch: int):
        self.runner = runner
        cache = runner.kv_cache
        self.width = -(-MAX_CONTEXT // cache.block_size)
        self.buckets = sorted({b for b in BUCKETS if b < max_batch} | {min(max_batch, BUCKETS[-1])})
        self.graphs: dict[int, _Graph] = {}
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):  # the largest first, so that the smaller reuse its memory
            self.graphs[b] = self._capture(b, pool)

    def _padding(self, batch: int) -> dict[str, int]:
        return {"pad_to": batch, "width": self.width, "scratch_block": self.runner.kv_cache.scratch_block}

    def _capture(self, batch: int, pool: tuple) -> _Graph:
        flat, layout = host_inputs([], self.runner.kv_cache.block_size, **self._padding(batch))
        buffer = flat.to(self.runner.device)
        inputs = step_inputs(buffer, layout)
        # Warm up on a side stream (Triton compiles, cuBLAS picks its kernels), then capture.
        side = torch.cuda.Stream(self.runner.device)
        side.wait_stream(torch.cuda.current_stream(self.runner.device))
        with torch.cuda.stream(side):
            self.runner.forward(inputs)
        torch.cuda.current_stream(self.runner.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = self.runner.forward(inputs)
        return _Graph(graph, buffer, logits)

    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor | None:
        """Logits [B, vocab] of the chunks that sample, or None if this step is not for a graph.

        The logits are the graph's own output buffer: read them before the next step."""
        if any(c.num_tokens != 1 for c in chunks) or len(chunks) > self.buckets[-1]:
            return None
        if any(c.start + 1 > MAX_CONTEXT for c in chunks):
            return None
        batch = next(b for b in self.buckets if b >= len(chunks))
        g = self.graphs[batch]
        flat, _ = host_inputs(chunks, self.runner.kv_cache.block_size, **self._padding(batch))
        g.buffer.copy_(self.runner.stage(flat), non_blocking=True)
        g.graph.replay()
        sampling = [i for i, c in enumerate(chunks) if c.samples]
        return g.logits[: len(chunks)] if len(sampling) == len(chunks) else g.logits[sampling]
