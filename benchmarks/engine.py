"""Engine speed on SmolLM2 beside transformers (float32) on the same weights, in one run.

For our ``auto`` dtype and for float32 it measures: prefill tokens/s at 512 and 2,048
prompt tokens (one request, one forward pass, first token included); decode tokens/s at
1, 8 and 32 concurrent sequences (64-token prompts, after their prefill); and the time to
first token of a 2,048-token system prompt plus a 64-token question, cold and with the
system prompt in the local prefix cache. transformers runs a forward pass for prefill and
``generate`` (batch 1, and batched for 8 and 32) for decode. The *limit* is the prefill
FLOPs (projections, causal attention, one logit row) divided by the rate of a large
matrix product in the same dtype on this machine.

Every figure is the median of ``--repeats`` runs after a warm-up round; the three
systems take turns run by run, so a noisy neighbour hurts them alike. JSON fields: those
of the ``auto`` dtype as named, float32's with a ``_fp32`` suffix.

On CUDA, or with ``--model-shape``, the benchmark is ``engine_gpu``'s instead: a model of
real size with random weights, beside transformers on the same tensors.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

from benchmarks.engine_timing import matmul_rate, prefill_flops, random_ids, take_turns

PREFILL_LENGTHS = (512, 2048)
BATCHES = (1, 8, 32)
DECODE_PROMPT, DECODE_TOKENS = 64, 33
SYSTEM_TOKENS, QUESTION_TOKENS = 2048, 64
TARGETS = {
    "prefill_vs_hf": 4.0,
    "prefill_vs_limit": 0.40,
    "prefill_vs_hf_fp32": 1.0,
    "decode_b32_vs_b1": 8.0,
    "ttft_hit_vs_cold": 0.10,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median counts")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default 2)")
    parser.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    from benchmarks import engine_gpu

    engine_gpu.add_arguments(parser)


# -- the systems ------------------------------------------------------------------------


class Ours:
    """Our engine in one dtype; every run uses a fresh tenant salt, so a cold cache."""

    def __init__(self, checkpoint: Any, dtype: str):
        from engine.config import EngineConfig
        from engine.runtime.llm_engine import LLMEngine

        config = EngineConfig(device="cpu", dtype=dtype, kv_cache_gb=1.0, max_num_batched_tokens=4096)
        self.engine = LLMEngine(config, checkpoint)
        self.vocab = checkpoint.config.vocab_size
        self.system = random_ids(SYSTEM_TOKENS, 7, self.vocab)
        self._runs = itertools.count()

    def _first_token_time(self, prompt: list[int], salt: str) -> float:
        """Seconds from ``add_request`` until the request's first token."""
        from engine.runtime.sampling_params import SamplingParams

        engine = self.engine
        start = time.perf_counter()
        rid = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=1), cache_salt=salt)
        while not any(o.request_id == rid for o in engine.step()):
            pass
        return time.perf_counter() - start

    def prefill_tps(self, n: int) -> float:
        return n / self._first_token_time(random_ids(n, n, self.vocab), f"cold-{next(self._runs)}")

    def decode_tps(self, batch: int) -> float:
        """Decode tokens/s of ``batch`` sequences, their prefill excluded."""
        from engine.runtime.sampling_params import SamplingParams

        engine, run = self.engine, next(self._runs)
        params = SamplingParams(temperature=0, max_tokens=DECODE_TOKENS, ignore_eos=True)
        for i in range(batch):
            engine.add_request(random_ids(DECODE_PROMPT, 1000 * run + i, self.vocab), params)
        engine.step()  # every prompt in one step (the budget holds them)
        start = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
        return batch * (DECODE_TOKENS - 1) / (time.perf_counter() - start)

    def ttft_s(self, hit: bool) -> float:
        """TTFT of the system prompt + a new question, cold or with the system prompt cached."""
        run = next(self._runs)
        question = random_ids(QUESTION_TOKENS, 100 + run, self.vocab)
        if not hit:
            return self._first_token_time(self.system + question, f"cold-{run}")
        self._first_token_time(self.system + random_ids(QUESTION_TOKENS, 10**6 + run, self.vocab), "warm")
        return self._first_token_time(self.system + question, "warm")


class Transformers:
    """transformers' LlamaForCausalLM on the same GGUF, float32: forward and ``generate``."""

    def __init__(self, path: Any, vocab: int):
        import os
        import tempfile

        import torch
        from transformers import AutoModelForCausalLM

        folder = tempfile.mkdtemp(prefix="kvtier-bench-")
        os.symlink(path, os.path.join(folder, path.name))
        self.model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=path.name, dtype=torch.float32
        ).eval()
        self.vocab = vocab

    def prefill_tps(self, n: int) -> float:
        import torch

        ids = torch.tensor([random_ids(n, n, self.vocab)])
        with torch.inference_mode():
            start = time.perf_counter()
            self.model(ids)
            return n / (time.perf_counter() - start)

    def _generate_s(self, ids: Any, tokens: int) -> float:
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            self.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0)
            return time.perf_counter() - start

    def decode_tps(self, batch: int) -> float:
        """Batched ``generate`` of DECODE_TOKENS, less a 1-token ``generate`` (the prefill)."""
        import torch

        ids = torch.tensor([random_ids(DECODE_PROMPT, 5000 + i, self.vocab) for i in range(batch)])
        full, prefill = self._generate_s(ids, DECODE_TOKENS), self._generate_s(ids, 1)
        return batch * (DECODE_TOKENS - 1) / (full - prefill)


def measure(systems: dict[str, Any], repeats: int) -> dict[str, float]:
    """Every figure for every system; keys get the system's suffix ('' / '_fp32' / 'hf_')."""
    out: dict[str, float] = {}

    def record(field: str, results: dict[str, float]) -> None:
        for name, value in results.items():
            out[f"hf_{field}" if name == "hf" else f"{field}{name}"] = value

    for n in PREFILL_LENGTHS:
        record(f"prefill_tps_{n}", take_turns(systems, "prefill_tps", n, repeats))
    for b in BATCHES:
        record(f"decode_tps_b{b}", take_turns(systems, "decode_tps", b, repeats))
    ours = {k: v for k, v in systems.items() if k != "hf"}
    record("ttft_cold_s", take_turns(ours, "ttft_s", False, repeats))
    record("ttft_local_hit_s", take_turns(ours, "ttft_s", True, repeats))
    n = PREFILL_LENGTHS[-1]
    for name in systems:
        prefix, suffix = ("hf_", "") if name == "hf" else ("", name)
        out[f"{prefix}prefill_tps{suffix}"] = out[f"{prefix}prefill_tps_{n}{suffix}"]
    return out


# -- report -----------------------------------------------------------------------------


def ratios(r: dict[str, float]) -> dict[str, float]:
    out = {
        "prefill_vs_limit": r["prefill_tps"] / r["prefill_limit_tps"],
        "prefill_vs_limit_fp32": r["prefill_tps_fp32"] / r["prefill_limit_tps_fp32"],
        "decode_b32_vs_b1": r["decode_tps_b32"] / r["decode_tps_b1"],
        "decode_b32_vs_b1_fp32": r["decode_tps_b32_fp32"] / r["decode_tps_b1_fp32"],
        "ttft_hit_vs_cold": r["ttft_local_hit_s"] / r["ttft_cold_s"],
        "ttft_hit_vs_cold_fp32": r["ttft_local_hit_s_fp32"] / r["ttft_cold_s_fp32"],
    }
    if "hf_prefill_tps" in r:
        out |= {
            "prefill_vs_hf": r["prefill_tps"] / r["hf_prefill_tps"],
            "prefill_vs_hf_fp32": r["prefill_tps_fp32"] / r["hf_prefill_tps"],
            "decode_b32_vs_hf_b32": r["decode_tps_b32"] / r["hf_decode_tps_b32"],
            "decode_b32_vs_hf_b32_fp32": r["decode_tps_b32_fp32"] / r["hf_decode_tps_b32"],
        }
    return out


def print_table(r: dict[str, float], auto: str) -> None:
    rows = [("prefill tok/s @512", "prefill_tps_512"), ("prefill tok/s @2048", "prefill_tps_2048"),
            ("prefill limit tok/s @2048", "prefill_limit_tps")]
    rows += [(f"decode tok/s, {b} seqs", f"decode_tps_b{b}") for b in BATCHES]
    rows += [("TTFT 2048+64 cold (s)", "ttft_cold_s"), ("TTFT 2048+64 local hit (s)", "ttft_local_hit_s")]
    hf = {"prefill_tps_512": "hf_prefill_tps_512", "prefill_tps_2048": "hf_prefill_tps_2048"}
    hf |= {f"decode_tps_b{b}": f"hf_decode_tps_b{b}" for b in BATCHES}
    print(f"{'':30s} {'kvtier ' + auto:>16s} {'kvtier float32':>16s} {'transformers fp32':>18s}")
    for label, key in rows:
        ref = r.get(hf.get(key, ""), float("nan"))
        print(f"{label:30s} {r[key]:16.3f} {r[key + '_fp32']:16.3f} {ref:18.3f}")
    print()
    for name, value in ratios(r).items():
        target = TARGETS.get(name)
        goal = "" if target is None else (f"target <= {target}" if name.startswith("ttft")
                                          else f"target >= {target}")
        print(f"{name:30s} {value:8.3f}   {goal}")


def run(args: argparse.Namespace) -> int:
    """The CPU benchmark on the real model; on CUDA or with a model shape, ``engine_gpu``'s."""
    import torch

    from benchmarks import engine_gpu
    from engine.dtype import dtype_name, resolve_device, resolve_dtype
    from engine.model.loader import load_checkpoint, resolve_model_path

    device = resolve_device(args.device)
    if args.model_shape or device != "cpu":
        if args.model:
            raise ValueError("--model is for the CPU benchmark; on a GPU pass --model-shape")
        return engine_gpu.run(args, device)
    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    auto = dtype_name(resolve_dtype("auto"))
    checkpoint = load_checkpoint(str(path), torch.float32)
    results: dict[str, Any] = {"model": path.name, "auto_dtype": auto, "threads": args.threads}
    n = PREFILL_LENGTHS[-1]
    for dtype, suffix in ((auto, ""), ("float32", "_fp32")):
        rate = matmul_rate(torch.bfloat16 if dtype == "bfloat16" else torch.float32, args.repeats)
        results[f"matmul_tflops{suffix}"] = rate / 1e12
        results[f"prefill_limit_tps{suffix}"] = n / (prefill_flops(checkpoint.config, n) / rate)
    systems: dict[str, Any] = {"": Ours(checkpoint, auto), "_fp32": Ours(checkpoint, "float32")}
    if not args.no_hf:
        systems["hf"] = Transformers(path, checkpoint.config.vocab_size)
    print(f"measuring kvtier {auto}, kvtier float32 and transformers float32 in turns ...", flush=True)
    results |= measure(systems, args.repeats)
    for key in [k for k in results if k.startswith("hf_")]:
        results[f"{key}_fp32"] = results[key]  # transformers runs in float32 in both columns
    results["ratios"] = ratios(results)
    print_table(results, auto)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
