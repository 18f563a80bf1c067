"""Steps replayed as CUDA graphs: one launch per step instead of one per kernel.

A decode step of a large model launches hundreds of small kernels; on a GPU their launch
overhead, not the arithmetic, sets its time. The same holds for a short prefill chunk
after a cache hit, which is what a hit leaves to compute. So at start, one step of each
shape below is captured as a graph over static input buffers:

- *decode* graphs for ``B`` one-token chunks, ``B`` in powers of two up to the engine's
  batch, with the decode attention variant;
- *warm* graphs for up to ``WARM_CHUNKS`` chunks of up to ``T`` rows in all (``T`` in
  powers of two up to ``WARM_ROWS``), every chunk after cached tokens.

A step takes the smallest graph that holds it (``step_inputs.Padding`` fills the rest),
copies its inputs into that graph's buffer, and replays. Steps with a cold prompt chunk,
more rows or chunks than any graph holds, or a context over ``MAX_CONTEXT`` run eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.runtime.scheduler import ScheduledChunk
from engine.runtime.step_inputs import Padding, host_inputs, step_inputs

MAX_BATCH = 256  # the largest decode graph
WARM_ROWS, WARM_CHUNKS = 512, 4
MAX_CONTEXT = 8192  # tokens; sizes every graph's block-table rows


@dataclass
class _Graph:
    padding: Padding
    graph: torch.cuda.CUDAGraph
    buffer: torch.Tensor  # the step's int64 inputs, as host_inputs lays them out
    logits: torch.Tensor  # [chunks, vocab] float32, written by each replay


def _powers_of_two(limit: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 < limit:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, limit})


class StepGraphs:
    """The captured steps of one ``ModelRunner``, smallest first in each family."""

    def __init__(self, runner: Any, max_batch: int):
        """``runner``: the owning ``ModelRunner`` (its ``forward``, ``stage``, ``kv_cache`` and
        ``device``); not imported here, since it imports this module."""
        self.runner = runner
        cache = runner.kv_cache
        width = -(-MAX_CONTEXT // cache.block_size)
        scratch = cache.scratch_block
        self.decode = [Padding(b, b, width, 1, scratch) for b in _powers_of_two(min(max_batch, MAX_BATCH))]
        self.warm = [Padding(t, WARM_CHUNKS, width, t, scratch) for t in _powers_of_two(WARM_ROWS)[3:]]
        pool = torch.cuda.graph_pool_handle()
        # The largest first, so that the smaller ones reuse its memory.
        shapes = sorted(self.decode + self.warm, key=lambda p: p.rows, reverse=True)
        self.graphs = {p: self._capture(p, pool) for p in shapes}
        self.replays = {"decode": 0, "warm": 0, "eager": 0}  # steps by how they ran

    def _capture(self, padding: Padding, pool: tuple) -> _Graph:
        flat, layout = host_inputs([], self.runner.kv_cache.block_size, padding)
        buffer = flat.to(self.runner.device)
        inputs = step_inputs(buffer, layout)
        # Warm up on a side stream (Triton compiles, cuBLAS picks its kernels), then capture.
        current = torch.cuda.current_stream(self.runner.device)
        side = torch.cuda.Stream(self.runner.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            self.runner.forward(inputs)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            logits = self.runner.forward(inputs)
        return _Graph(padding, graph, buffer, logits)

    def _shape(self, chunks: list[ScheduledChunk]) -> Padding | None:
        """The smallest captured shape that holds this step, if any."""
        if any(c.start + c.num_tokens > MAX_CONTEXT for c in chunks):
            return None
        if all(c.num_tokens == 1 for c in chunks):
            return next((p for p in self.decode if p.chunks >= len(chunks)), None)
        if len(chunks) > WARM_CHUNKS or any(c.start == 0 for c in chunks):  # a cold prompt: eager
            return None
        rows = sum(c.num_tokens for c in chunks)
        return next((p for p in self.warm if p.rows >= rows), None)

    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor | None:
        """Logits [B, vocab] of the chunks that sample, or None if no graph holds this step.

        The logits are a view of the graph's own output: read them before the next step."""
        padding = self._shape(chunks)
        if padding is None:
            self.replays["eager"] += 1
            return None
        self.replays["decode" if padding.max_q_len == 1 else "warm"] += 1
        g = self.graphs[padding]
        flat, _ = host_inputs(chunks, self.runner.kv_cache.block_size, padding)
        g.buffer.copy_(self.runner.stage(flat), non_blocking=True)
        g.graph.replay()
        return g.logits[: sum(c.samples for c in chunks)]
