"""Run the model on one step's chunks, on the CPU or a GPU."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from engine.model.kv_cache import KVCache
from engine.model.model import LlamaModel
from engine.runtime.cuda_graphs import StepGraphs
from engine.runtime.scheduler import ScheduledChunk
from engine.runtime.step_inputs import Padding, StepInputs, host_inputs, step_inputs


class ModelRunner:
    """Runs the model on one step's chunks. Not thread-safe: one step at a time.

    On a GPU, steps that only read cached K/V (decodes, prefill chunks after a hit) replay
    CUDA graphs (``cuda_graphs.StepGraphs``) when given ``graph_batch`` > 0, the most
    decodes a step may hold.
    """

    def __init__(self, model: LlamaModel, kv_cache: KVCache, device: str = "cpu", graph_batch: int = 0):
        self.model = model
        self.kv_cache = kv_cache
        self.device = torch.device(device)
        self._staging = torch.empty(0, dtype=torch.int64)
        self.graphs = None
        if self.device.type == "cuda" and graph_batch:
            self.graphs = StepGraphs(self, graph_batch)

    def stage(self, flat: torch.Tensor) -> torch.Tensor:
        """``flat`` in page-locked host memory, ready for a copy that does not wait (GPU only).

        One buffer is reused: the previous step's copy has completed by now, since every
        step ends by reading its sampled tokens on the host."""
        if self._staging.numel() < flat.numel():
            self._staging = torch.empty(max(flat.numel(), 2 * self._staging.numel()), dtype=torch.int64,
                                        pin_memory=True)
        return self._staging[: flat.numel()].copy_(flat)

    def inputs(self, chunks: list[ScheduledChunk], padding: Padding | None = None) -> StepInputs:
        """The step's inputs on the model's device (``padding``: a CUDA graph's step shape)."""
        flat, layout = host_inputs(chunks, self.kv_cache.block_size, padding)
        if self.device.type != "cpu":
            flat = self.stage(flat).to(self.device, non_blocking=True)
        return step_inputs(flat, layout)

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Logits [B, vocab] float32 of ``inputs.logit_rows``, on the model's device."""
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()
        with torch.inference_mode(), on_device:  # kernels launch on the model's GPU, whichever is current
            return self.model.forward(
                inputs.input_ids, inputs.positions, inputs.meta, self.kv_cache, inputs.logit_rows
            )

    def run(self, chunks: list[ScheduledChunk]) -> torch.Tensor:
        """Logits [B, vocab] of the chunks that sample, in chunk order."""
        if self.graphs is not None:
            logits = self.graphs.run(chunks)
            if logits is not None:
                return logits
        return self.forward(self.inputs(chunks))
