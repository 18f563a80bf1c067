"""Engine speed on a model shape of real size (random weights), beside transformers on the
same tensors and beside the device's own limits, all measured in one run.

``kvtier bench engine --device cuda --model-shape llama3-8b`` measures, for our engine and
for transformers (sdpa, the same dtype, the same weight tensors):

- prefill tokens/s of one cold request at each ``--prefill-lengths`` (a fresh cache salt
  per run, so nothing is cached);
- the time to first token of ``--cached-prefix`` + ``--new-tokens`` tokens, cold and with
  the prefix cached (transformers: a ``DynamicCache`` of the prefix, cropped back before
  each run), which is what a cache hit leaves to compute;
- decode tokens/s at each of ``--batches`` sequences of ``--prompt-tokens`` tokens: only
  ``--decode-steps`` steps after every prefill has finished are timed.

And the references: the rate of a ``--matmul-size``-cubed matrix product (the roofline of
prefill FLOPs) and of a ``--copy-mib`` device-to-device copy (read + write bytes per
second; weight bytes read per token over it is the batch-1 decode limit). Every figure is
the median of ``--repeats`` runs after a warm-up run, the two systems taking turns, with
the device synchronized around each timing. A figure transformers fails (out of memory,
say) is recorded under ``hf_errors`` and the run goes on; the JSON is rewritten after
every figure, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.engine_timing import matmul_rate, median_time, prefill_flops, random_ids, take_turns, timed

# ratio -> (how it compares, target): the targets of issue 21 for an 8B shape on a GPU.
TARGETS = {
    "prefill_vs_hf_2048": (">=", 1.0),
    "prefill_vs_roofline_2048": (">=", 0.60),
    "cached_vs_hf": ("<=", 0.30),
    "cached_vs_cold": ("<=", 0.10),
    "decode_b32_vs_b1": (">=", 10.0),
    "decode_b1_vs_limit": (">=", 0.50),
}
GPU_RESULTS = Path("benchmarks/results/gpu")


def int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from engine.cli import add_device_arguments

    add_device_arguments(parser)
    g = parser.add_argument_group("model shapes (the GPU benchmark; also runs on the CPU)")
    g.add_argument("--model-shape", metavar="NAME",
                   help="random weights of this shape: llama3-8b, llama3.2-1b, qwen2.5-7b, smollm2-135m "
                        "(default on CUDA: llama3-8b)")
    g.add_argument("--prefill-lengths", type=int_list, default=(512, 2048, 8192), metavar="N,N")
    g.add_argument("--cached-prefix", type=int, default=2048, metavar="N")
    g.add_argument("--new-tokens", type=int, default=64, metavar="N")
    g.add_argument("--batches", type=int_list, default=(1, 8, 32, 128), metavar="B,B")
    g.add_argument("--prompt-tokens", type=int, default=512, metavar="N", help="decode prompts")
    g.add_argument("--decode-steps", type=int, default=32, metavar="N", help="timed decode steps")
    g.add_argument("--hf-max-batch", type=int, default=128, metavar="B",
                   help="transformers decodes batches up to this size only")
    g.add_argument("--matmul-size", type=int, metavar="N", help="roofline product (default 8192; CPU 1024)")
    g.add_argument("--copy-mib", type=int, default=1024, metavar="MIB", help="bandwidth copy size")
    g.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    g.add_argument("--max-seconds", type=float, metavar="S",
                   help="start no figure after this many seconds (the rest are listed as skipped)")


def synchronizer(device: str):
    """A function that waits for the device's queued work (nothing to wait for on a CPU)."""
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


# -- the systems ------------------------------------------------------------------------


class Ours:
    """Our engine on the device; every cold run uses a fresh tenant salt."""

    def __init__(self, checkpoint: Any, args: argparse.Namespace, device: str, sync):
        from engine.config import EngineConfig
        from engine.runtime.llm_engine import LLMEngine

        block = EngineConfig().block_size
        longest = max(*args.prefill_lengths, args.cached_prefix + args.new_tokens)
        batch = max(args.batches)
        # Each request's output budget outlasts its timed steps, whatever steps its batch's
        # prefill takes: its prompts share each step's token budget with the decodes.
        prefill_steps = -(-batch * args.prompt_tokens // max(longest - batch, 1)) + 1
        self.max_tokens = args.decode_steps + 2 + prefill_steps
        per_seq = -(-(args.prompt_tokens + self.max_tokens) // block)
        num_blocks = max(-(-longest // block) + 1, batch * per_seq) + 64
        self.config = EngineConfig(device=device, dtype=args.dtype, cuda_graphs=not args.no_cuda_graphs,
                                   block_size=block, num_blocks=num_blocks, max_num_seqs=batch,
                                   max_num_batched_tokens=longest)
        self.engine = LLMEngine(self.config, checkpoint)
        self.args, self.sync, self.vocab = args, sync, checkpoint.config.vocab_size
        self.prefix = random_ids(args.cached_prefix, 7, self.vocab)
        self._runs = itertools.count()

    def _first_token_s(self, prompt: list[int], salt: str) -> float:
        from engine.runtime.sampling_params import SamplingParams

        def first_token() -> None:
            params = SamplingParams(temperature=0, max_tokens=1)
            rid = self.engine.add_request(prompt, params, cache_salt=salt)
            while not any(o.request_id == rid for o in self.engine.step()):
                pass

        return timed(self.sync, first_token)

    def prefill_s(self, n: int) -> float:
        return self._first_token_s(random_ids(n, n, self.vocab), f"cold-{next(self._runs)}")

    def ttft_s(self, hit: bool) -> float:
        """The prefix and a new question, cold or with the prefix cached."""
        run = next(self._runs)
        question = random_ids(self.args.new_tokens, 100 + run, self.vocab)
        if not hit:
            return self._first_token_s(self.prefix + question, f"cold-{run}")
        self._first_token_s(self.prefix + random_ids(self.args.new_tokens, 10**6 + run, self.vocab), "warm")
        return self._first_token_s(self.prefix + question, "warm")

    def decode_tps(self, batch: int) -> float:
        from engine.runtime.sampling_params import SamplingParams

        engine, run, steps = self.engine, next(self._runs), self.args.decode_steps
        params = SamplingParams(temperature=0, max_tokens=self.max_tokens, ignore_eos=True)
        rids = {engine.add_request(random_ids(self.args.prompt_tokens, 1000 * run + i, self.vocab), params,
                                   cache_salt=f"decode-{run}") for i in range(batch)}
        started: set[str] = set()
        while started != rids:
            started |= {o.request_id for o in engine.step()}
        counts = []
        seconds = timed(self.sync, lambda: counts.extend(len(engine.step()) for _ in range(steps)))
        for rid in rids:
            engine.abort(rid)
        if counts != [batch] * steps:
            raise RuntimeError(f"bug: decode steps of {batch} sequences gave {counts} tokens")
        return batch * steps / seconds


# -- the run ----------------------------------------------------------------------------


def references(args: argparse.Namespace, device: str, dtype: Any, sync) -> dict[str, float]:
    """The device's matrix-product rate and copy bandwidth, in the run's dtype."""
    import torch

    size = args.matmul_size or (8192 if device.startswith("cuda") else 1024)
    repeats = max(args.repeats, 10)  # milliseconds each: more runs cost nothing and steady the clocks
    rate = matmul_rate(dtype, repeats, size, device, sync)
    src = torch.empty(args.copy_mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_s = median_time(lambda: dst.copy_(src), repeats, sync)
    return {"matmul_size": size, "matmul_tflops": rate / 1e12, "copy_gbps": 2 * src.numel() / copy_s / 1e9}


def measure(systems: dict[str, Any], args: argparse.Namespace, save) -> tuple[dict, dict]:
    """Every figure, in order of importance; ``save(figures, errors)`` after each.
    transformers' failures are recorded per figure in ``errors`` and the figure is measured
    again without it. Past ``--max-seconds``, figures are listed under ``skipped``."""
    out: dict[str, Any] = {"skipped": []}
    errors: dict[str, str] = {}
    began = time.perf_counter()

    def figure(name: str, method: str, arg: Any, hf: bool = True) -> None:
        if args.max_seconds is not None and time.perf_counter() - began > args.max_seconds:
            out["skipped"].append(name)
            return
        turn = dict(systems) if hf else {k: v for k, v in systems.items() if k != "hf"}
        try:
            results = take_turns(turn, method, arg, args.repeats)
        except Exception as e:  # a one-shot GPU run keeps our figures when transformers fails
            if "hf" not in turn:
                raise
            results = take_turns({"": systems[""]}, method, arg, args.repeats)  # raises if ours failed
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"transformers failed at {name}: {errors[name]}", flush=True)
        for system, value in results.items():
            out[f"hf_{name}" if system == "hf" else name] = value
        print(f"  {name}: " + ", ".join(f"{s or 'kvtier'} {v:.4g}" for s, v in results.items()), flush=True)
        save(out, errors)

    for n in args.prefill_lengths:
        figure(f"prefill_s_{n}", "prefill_s", n)
    figure("cold_s", "ttft_s", False)
    figure("cached_s", "ttft_s", True)
    for b in args.batches:
        figure(f"decode_tps_b{b}", "decode_tps", b, hf=b <= args.hf_max_batch)
    return out, errors


def derive(r: dict[str, Any], args: argparse.Namespace) -> None:
    """Add the rates and milliseconds that the measured seconds give."""
    for who in ("", "hf_"):
        for n in args.prefill_lengths:
            if f"{who}prefill_s_{n}" in r:
                r[f"{who}prefill_tps_{n}"] = n / r[f"{who}prefill_s_{n}"]
        for key in ("cold", "cached"):
            if f"{who}{key}_s" in r:
                r[f"{who}{key}_ms"] = 1e3 * r[f"{who}{key}_s"]


def ratios(r: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Ours against transformers, against the limits, and against itself."""
    out = {}
    for who in ("", "hf_"):
        for n in args.prefill_lengths:
            tps = r.get(f"{who}prefill_tps_{n}")
            if tps is not None:
                out[f"{who}prefill_vs_roofline_{n}"] = tps / r[f"roofline_prefill_tps_{n}"]
        if f"{who}cached_s" in r:
            out[f"{who}cached_vs_cold"] = r[f"{who}cached_s"] / r[f"{who}cold_s"]
        if f"{who}decode_tps_b1" in r:
            out[f"{who}decode_b1_vs_limit"] = r[f"{who}decode_tps_b1"] / r["decode_limit_tps_b1"]
            for b in args.batches:
                if b != 1 and f"{who}decode_tps_b{b}" in r:
                    out[f"{who}decode_b{b}_vs_b1"] = r[f"{who}decode_tps_b{b}"] / r[f"{who}decode_tps_b1"]
    for n in args.prefill_lengths:
        if f"hf_prefill_tps_{n}" in r:
            out[f"prefill_vs_hf_{n}"] = r[f"prefill_tps_{n}"] / r[f"hf_prefill_tps_{n}"]
    if "hf_cached_s" in r:
        out["cached_vs_hf"] = r["cached_s"] / r["hf_cached_s"]
    for b in args.batches:
        if f"hf_decode_tps_b{b}" in r:
            out[f"decode_b{b}_vs_hf"] = r[f"decode_tps_b{b}"] / r[f"hf_decode_tps_b{b}"]
    return out


def targets(ratio: dict[str, float]) -> dict[str, dict]:
    """Each target with its measured ratio (None where this run did not measure it)."""
    out = {}
    for name, (op, goal) in TARGETS.items():
        value = ratio.get(name)
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out[name] = {"value": value, "target": f"{op} {goal}", "met": met}
    return out


def print_table(r: dict[str, Any], args: argparse.Namespace) -> None:
    nan = float("nan")
    print(f"\n{r['model_shape']} on {r['device_name']}, {r['dtype']}; torch {r['torch']}, "
          f"transformers {r.get('transformers')}")
    print(f"matmul {r['matmul_tflops']:.3g} TFLOP/s, copy {r['copy_gbps']:.4g} GB/s, "
          f"weights read per token {r['weight_bytes_per_token'] / 1e9:.3g} GB")
    print(f"{'':36s} {'kvtier':>12s} {'transformers':>13s} {'limit':>12s}")
    rows = [(f"prefill tok/s @{n}", f"prefill_tps_{n}", r[f"roofline_prefill_tps_{n}"])
            for n in args.prefill_lengths]
    both = f"{args.cached_prefix}+{args.new_tokens}"
    rows += [(f"TTFT {both} cold (ms)", "cold_ms", nan),
             (f"TTFT {both}, {args.cached_prefix} cached (ms)", "cached_ms", nan)]
    rows += [(f"decode tok/s, {b} seqs", f"decode_tps_b{b}", r["decode_limit_tps_b1"] if b == 1 else nan)
             for b in args.batches]
    for label, key, limit in rows:
        print(f"{label:36s} {r.get(key, nan):12.1f} {r.get('hf_' + key, nan):13.1f} {limit:12.1f}")
    print()
    for name, value in r["ratios"].items():
        goal = r["targets"].get(name, {}).get("target", "")
        print(f"{name:30s} {value:8.3f}   {'target ' + goal if goal else ''}")
    for name, error in r["hf_errors"].items():
        print(f"transformers failed at {name}: {error}")
    if r["skipped"]:
        print(f"skipped after --max-seconds {args.max_seconds}: {', '.join(r['skipped'])}")


def check_shape(args: argparse.Namespace) -> str:
    """The shape to run (default llama3-8b); ``ValueError`` if the lengths do not fit it."""
    from engine.model.shapes import SHAPES

    shape = args.model_shape or "llama3-8b"
    if shape not in SHAPES:
        raise ValueError(f"--model-shape {shape!r} is unknown; use one of {sorted(SHAPES)}")
    longest = max(*args.prefill_lengths, args.cached_prefix + args.new_tokens,
                  args.prompt_tokens + args.decode_steps + 8)
    if longest >= SHAPES[shape].max_position:
        raise ValueError(f"{shape} holds {SHAPES[shape].max_position} positions; shorten the lengths")
    return shape


def header(args: argparse.Namespace, device: str, shape: str) -> dict[str, Any]:
    import torch

    settings = ("prefill_lengths", "cached_prefix", "new_tokens", "batches", "prompt_tokens",
                "decode_steps", "hf_max_batch", "repeats", "copy_mib", "seed")
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.machine()
    return {"model_shape": shape, "device": device, "device_name": name, "dtype": args.dtype,
            "torch": torch.__version__, "python": platform.python_version(),
            "settings": {k: getattr(args, k) for k in settings},
            "seconds": {}, "complete": False, "hf_errors": {}}


def limits(config: Any, dtype: Any, r: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """The shape's sizes and, from the measured references, its prefill and decode limits."""
    import torch

    from engine.model.shapes import num_parameters

    params, item = num_parameters(config), torch.finfo(dtype).bits // 8
    untied_embed = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    # A decode step reads every weight once, but only one row of an untied embedding.
    per_token = (params - untied_embed) * item
    out = {"num_parameters": params, "weight_bytes": params * item, "weight_bytes_per_token": per_token,
           "decode_limit_tps_b1": r["copy_gbps"] * 1e9 / per_token}
    for n in args.prefill_lengths:
        out[f"roofline_prefill_tps_{n}"] = n / (prefill_flops(config, n) / (r["matmul_tflops"] * 1e12))
    return out


def run(args: argparse.Namespace, device: str) -> int:
    import torch

    from engine.dtype import dtype_name, resolve_dtype
    from engine.model.shapes import random_checkpoint

    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    shape = check_shape(args)
    dtype = resolve_dtype(args.dtype, device)
    args.dtype = dtype_name(dtype)
    path = args.json or (str(GPU_RESULTS / f"engine-{shape}.json") if device.startswith("cuda") else None)
    sync = synchronizer(device)
    r = header(args, device, shape)

    def save(figures: dict | None = None, errors: dict | None = None) -> None:
        r.update(figures or {})
        r["hf_errors"].update(errors or {})
        r["seconds"]["total"] = time.perf_counter() - began
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(r, indent=2))

    print(f"references on {device} ...", flush=True)
    r |= references(args, device, dtype, sync)
    start = time.perf_counter()
    checkpoint = random_checkpoint(shape, dtype, device, args.seed)
    sync()
    r["seconds"]["weights"] = time.perf_counter() - start
    r["model_id"] = checkpoint.model_id
    r |= limits(checkpoint.config, dtype, r, args)
    systems = make_systems(checkpoint, args, device, sync, r)
    save()
    print(f"measuring {' and '.join(['kvtier', 'transformers'][:len(systems)])} on {shape} in turns ...",
          flush=True)
    start = time.perf_counter()
    figures, errors = measure(systems, args, save)
    r["seconds"]["figures"] = time.perf_counter() - start
    r |= figures
    derive(r, args)
    r["ratios"] = ratios(r, args)
    r["targets"] = targets(r["ratios"])
    if device.startswith("cuda"):
        r["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    r["complete"] = True
    save(errors=errors)
    print_table(r, args)
    if path:
        print(f"\nwrote {path}")
    return 0


def make_systems(checkpoint: Any, args: argparse.Namespace, device: str, sync, r: dict) -> dict[str, Any]:
    """Our engine and (unless ``--no-hf``) transformers on the checkpoint; notes their settings in ``r``."""
    start = time.perf_counter()
    systems: dict[str, Any] = {"": Ours(checkpoint, args, device, sync)}
    r["engine_config"] = {k: v for k, v in asdict(systems[""].config).items() if k != "hash_secret"}
    if not args.no_hf:
        import transformers

        from benchmarks.hf_reference import Transformers, attention_implementation

        systems["hf"] = Transformers(checkpoint, args, device, sync)
        r["transformers"] = transformers.__version__
        r["hf_attn_implementation"] = attention_implementation(systems["hf"].model)
    r["seconds"]["setup"] = time.perf_counter() - start
    return systems
