"""Time to first token with and without the cache, on a CPU or a GPU, in one run.

Engines run in this process; the cache service is a real ``kvtier serve`` child process
with a TCP data port and a Unix socket. The model is the SmolLM2 GGUF, or random weights
of a real shape (``--model-shape llama3-8b``), on ``--device cpu`` or ``cuda``.

- A system prompt (``--system-tokens``, 2,048) and a question (``--question-tokens``, 64):
  TTFT **cold** (an engine that has seen nothing); with a **local**-pool hit (the same
  engine, another question); with a hit from the service's DRAM, for a fresh engine on the
  same host (**dram**, ``unix://``: blocks copied straight out of the service's shared
  memory) and for one on another host (**dram_tcp**, ``kvtier://``); with a hit from
  **flash** (the service restarted: its DRAM empty, its LMDB full; ``unix://``). On CUDA
  also from the service's **hbm** tier, opened by CUDA IPC (a second service whose DRAM
  holds 4 blocks, so what an engine saves there lands in HBM, the last few blocks aside).
- A chat of ``--turns`` turns, about 200 new tokens a turn (a user message, then the reply
  the model writes): TTFT of each turn on one engine (the router keeps a conversation on
  its replica) with the cache (its prefix cache and the service) and without (neither).
- The **floor** of each hit: the bytes it loaded divided by the copy bandwidth measured in
  this run (CPU: a numpy copy of the same bytes; CUDA: a pinned-host-to-GPU copy of them,
  and a GPU-to-GPU copy for the hbm hit) plus the time to prefill the uncached suffix (the
  local-hit TTFT, where nothing is loaded). ``*_vs_floor`` is how far the measurement is above it.

TTFT is from ``add_request`` to the first token out of ``step``, fetching included; each
figure is the median of ``--repeats`` runs, each with its own fresh engines and questions.
Every engine first answers a short warm-up prompt (the same for all, so later engines
fetch it: connections, the shared-memory mapping and its GPU registration are set up
before anything is timed), and its saves are flushed before each timed request.

Sizes follow the model's KV bytes per token: each engine's pool holds the longest prompt
twice over, and the service's DRAM every block the run writes, so nothing is evicted
before a hit reads it. On CUDA at most two engines are alive at once: each builds its own
fused weight copies (16 GB at the 8B shape), so a finished one is dropped before the next.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli import DTYPE_CHOICES

SYSTEM_TOKENS, QUESTION_TOKENS, TURNS = 2048, 64, 8
TURN_USER_TOKENS, TURN_REPLY_TOKENS = 150, 50
WARMUP_TOKENS = 33  # two blocks and a token: every engine's first, untimed request
HIT_CASES = ("dram", "dram_tcp", "flash", "hbm")  # hbm on CUDA only
CASES = ("cold", "local", *HIT_CASES)
# The most each ratio may be, per device (the targets).
TARGETS = {
    "cpu": {"dram_vs_cold": 0.10, "flash_vs_cold": 0.15, "dram_vs_floor": 2.0, "flash_vs_floor": 2.0,
            "turn8_vs_turn1_cached": 1.5},
    "cuda": {"dram_vs_cold": 0.15, "dram_vs_floor": 1.5, "flash_vs_cold": 0.30, "hbm_vs_cold": 0.08,
             "turn8_vs_turn1_cached": 1.3},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write the results here")
    p.add_argument("--plot", metavar="FILE.png", help="plot TTFT per turn with and without the cache")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the median counts")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the engines run")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct)")
    model.add_argument("--model-shape", metavar="NAME",
                       help="random weights of this shape instead: llama3-8b, llama3.2-1b, qwen2.5-7b, "
                            "smollm2-135m")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="engine dtype (default auto)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default 2)")
    p.add_argument("--system-tokens", type=int, default=SYSTEM_TOKENS, metavar="N")
    p.add_argument("--question-tokens", type=int, default=QUESTION_TOKENS, metavar="N")
    p.add_argument("--turns", type=int, default=TURNS, metavar="N", help="turns of the chat")


def check(args: argparse.Namespace, block_size: int) -> None:
    if args.system_tokens < block_size:
        raise ValueError(f"--system-tokens must be at least one block ({block_size}) to be cached")
    for name in ("question_tokens", "turns", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")


# -- sizes ------------------------------------------------------------------------------


def num_chats(repeats: int) -> int:
    return max(1, repeats // 2)


def pool_blocks(args: argparse.Namespace, block_size: int) -> int:
    """Each engine's KV pool: twice the most one engine holds (the system prompt and two
    questions, or the whole chat) and the warm-up prompt."""
    most = max(args.system_tokens + 2 * args.question_tokens,
               (args.turns + 1) * (TURN_USER_TOKENS + TURN_REPLY_TOKENS))
    return 2 * -(-(most + WARMUP_TOKENS) // block_size) + 8


def stored_bytes(page_bytes: int) -> int:
    """What one block takes in a service's DRAM: whole pages."""
    from cacheserver.config import ServeConfig

    page = ServeConfig().page_kb << 10
    return -(-page_bytes // page) * page


def service_settings(args: argparse.Namespace, page_bytes: int, block_size: int, socket: str) -> dict:
    """``kvtier serve`` settings whose DRAM holds twice every block the run writes (once
    written, once promoted back from flash after a restart), and flash as much again."""
    prompts = 1 + 5 * args.repeats + num_chats(args.repeats) * args.turns
    tokens = WARMUP_TOKENS + args.repeats * (args.system_tokens + 5 * args.question_tokens) \
        + num_chats(args.repeats) * (args.turns + 1) * (TURN_USER_TOKENS + TURN_REPLY_TOKENS)
    blocks = -(-tokens // block_size) + prompts  # a partial block per prompt, rounded up
    dram = 2 * blocks * stored_bytes(page_bytes) + (64 << 20)
    return {"unix_socket": socket, "dram_gb": round(dram / 2**30, 4), "flash_gb": round(2 * dram / 2**30, 4)}


# -- engines ----------------------------------------------------------------------------


class Bench:
    """One checkpoint, the service, and the engines made on them: each made, warmed up,
    measured and dropped by ``session``, so the caller never holds one past its use."""

    def __init__(self, checkpoint, args: argparse.Namespace, service, socket: str, num_blocks: int, *,
                 hbm_socket: str | None = None):
        self.checkpoint = checkpoint
        self.args = args
        self.service = service
        self.num_blocks = num_blocks
        self.urls = {"unix": f"unix://{socket}", "tcp": service.data_url}
        if hbm_socket:
            self.urls["hbm"] = f"unix://{hbm_socket}"
        self.vocab = checkpoint.config.vocab_size
        self.warmup = self.tokens(WARMUP_TOKENS, 1)

    def tokens(self, n: int, seed: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(100, self.vocab - 100, (n,), generator=g).tolist()

    def session(self, url: str | None, measure: Callable[[Any], Any], cache: bool = True) -> Any:
        """``measure(engine)`` on a fresh, warmed-up engine (with a connector to ``url``, if
        any), which is closed and freed before this returns."""
        from engine.config import EngineConfig
        from engine.runtime.connector import CacheConnector, ConnectorConfig
        from engine.runtime.llm_engine import LLMEngine

        # A save queue (and staging ring) as large as the pool.
        cuda = self.args.device if self.args.device.startswith("cuda") else None
        connector = CacheConnector(ConnectorConfig(url, fetch_timeout_s=30, save_queue_blocks=self.num_blocks,
                                                   device=cuda)) if url else None
        config = EngineConfig(device=self.args.device, dtype=self.args.dtype, num_blocks=self.num_blocks,
                              max_num_seqs=4, enable_prefix_caching=cache)
        engine = LLMEngine(config, self.checkpoint, connector)
        try:
            ttft(engine, self.warmup)
            return measure(engine)
        finally:
            if connector is not None:
                flush(engine)
                connector.close()
            del engine
            gc.collect()  # its pool and fused weights go now, before the next engine is made
            if self.args.device == "cuda":
                import torch

                torch.cuda.empty_cache()


def flush(engine) -> None:
    if not engine.connector.flush(60):
        raise RuntimeError(f"the cache service took no saves for 60 s: {engine.connector.stats.as_dict()}")


def ttft(engine, prompt: list[int]) -> float:
    """Seconds from ``add_request`` to the first token, after the engine's saves are sent
    and its device is idle (so nothing earlier is timed)."""
    import torch

    from engine.runtime.sampling_params import SamplingParams

    if engine.connector is not None:
        flush(engine)
    if engine.device.startswith("cuda"):
        torch.cuda.synchronize(engine.device)
    start = time.perf_counter()
    request = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=1))
    while True:
        for out in engine.step():
            if out.request_id == request:
                return time.perf_counter() - start


def hit(engine, prompt: list[int], case: str) -> dict[str, Any]:
    """TTFT of a prompt whose prefix the service holds; what was loaded, and from where."""
    stats, counters = engine.connector.stats, engine.connector.client.counters
    fetched, mapped, tiers = stats.fetched_bytes, counters.mapped_bytes, stats.hits_by_tier.copy()
    seconds = ttft(engine, prompt)
    return {case: seconds, f"loaded_bytes_{case}": stats.fetched_bytes - fetched,
            f"mapped_bytes_{case}": counters.mapped_bytes - mapped,
            f"tiers_{case}": dict(stats.hits_by_tier - tiers)}


def generate(engine, prompt: list[int], n: int) -> list[int]:
    from engine.runtime.sampling_params import SamplingParams

    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))[0]
    return out.token_ids


# -- the cases --------------------------------------------------------------------------


def system_prompt_case(b: Bench, seed: int) -> dict[str, Any]:
    """One run of cold / local / dram / dram_tcp / flash (/ hbm) for one system prompt."""
    system = b.tokens(b.args.system_tokens, seed)
    q = [system + b.tokens(b.args.question_tokens, seed * 10 + i) for i in range(7)]
    out: dict[str, Any] = {}
    out["cold"], out["local"] = b.session(b.urls["unix"], lambda e: (ttft(e, q[0]), ttft(e, q[1])))
    # Its blocks are in the service's DRAM now.
    out |= b.session(b.urls["unix"], lambda e: hit(e, q[2], "dram"))
    out |= b.session(b.urls["tcp"], lambda e: hit(e, q[3], "dram_tcp"))
    b.service.restart()  # SIGTERM copies DRAM to flash; the new process starts with DRAM empty
    out |= b.session(b.urls["unix"], lambda e: hit(e, q[4], "flash"))
    if "hbm" in b.urls:  # an engine fills the HBM service, a fresh one hits it
        b.session(b.urls["hbm"], lambda e: ttft(e, q[5]))
        out |= b.session(b.urls["hbm"], lambda e: hit(e, q[6], "hbm"))
    return out


def chat_case(b: Bench, seed: int) -> tuple[list[float], list[float]]:
    """TTFT of each turn of a chat on one engine, with its prefix cache and the service,
    and on another without either; both see the same history, whose replies the cached
    engine writes (as a replica does)."""

    def turns(cached, uncached) -> tuple[list[float], list[float]]:
        history = b.tokens(TURN_USER_TOKENS, seed)
        times: tuple[list[float], list[float]] = ([], [])
        for turn in range(b.args.turns):
            times[0].append(ttft(cached, history))
            times[1].append(ttft(uncached, history))
            if turn + 1 < b.args.turns:
                reply = generate(cached, history, TURN_REPLY_TOKENS)
                history = history + reply + b.tokens(TURN_USER_TOKENS, seed * 100 + turn)
        return times

    return b.session(b.urls["unix"], lambda cached: b.session(None, lambda u: turns(cached, u), cache=False))


# -- the floor's copy bandwidth ---------------------------------------------------------


def numpy_copy(nbytes: int, device: str) -> float:
    """Bytes per second of numpy copies of ``nbytes`` in host memory, in 16 pieces over
    ``tiers.parallel``'s threads as kvtier's own large copies run, median of 5."""
    import numpy as np

    from tiers import parallel

    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.ones_like(src)  # touched once, as the engine's pages are
    pieces = list(zip(np.array_split(dst, 16), np.array_split(src, 16), strict=True))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        parallel.copy_all(pieces)
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times)


def pinned_h2d_copy(nbytes: int, device: str) -> float:
    """Bytes per second of a copy of ``nbytes`` from pinned host memory to the GPU, median of 5."""
    import torch

    return _gpu_copy_rate(torch.empty(nbytes, dtype=torch.uint8, pin_memory=True), device)


def d2d_copy(nbytes: int, device: str) -> float:
    """Bytes per second of a copy of ``nbytes`` from GPU memory to GPU memory, median of 5."""
    import torch

    return _gpu_copy_rate(torch.empty(nbytes, dtype=torch.uint8, device=device), device)


def _gpu_copy_rate(src, device: str) -> float:
    """Bytes per second of copying ``src`` into a tensor on ``device``, median of 5 after a warm-up."""
    import torch

    dst = torch.empty(src.numel(), dtype=src.dtype, device=device)
    dst.copy_(src, non_blocking=True)  # warm-up
    times = []
    for _ in range(5):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return src.numel() / statistics.median(times)


# device -> (result field, how the floor's copy is measured there)
COPIES = {"cpu": ("numpy_copy_gbps", numpy_copy), "cuda": ("pinned_h2d_copy_gbps", pinned_h2d_copy)}
HBM_COPY = ("d2d_copy_gbps", d2d_copy)  # the hbm hit's floor: GPU to GPU


# -- the run ----------------------------------------------------------------------------


def load(args: argparse.Namespace):
    """The checkpoint to run, and its name: a shape's random weights or a GGUF file."""
    from engine.dtype import resolve_dtype
    from engine.model.loader import load_checkpoint, resolve_model_path
    from engine.model.shapes import random_checkpoint

    dtype = resolve_dtype(args.dtype, args.device)
    if args.model_shape:
        print(f"random weights of {args.model_shape} ({dtype}) on {args.device} ...",
              file=sys.stderr, flush=True)
        return random_checkpoint(args.model_shape, dtype, args.device, seed=0), args.model_shape
    path = resolve_model_path(args.model)
    print(f"loading {path.name} ({dtype}) ...", file=sys.stderr, flush=True)
    return load_checkpoint(str(path), dtype), path.name


def header(args: argparse.Namespace, model: str, checkpoint, page_bytes: int, block_size: int) -> dict:
    import torch

    from engine.dtype import dtype_name, resolve_dtype

    if args.device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")),
                    platform.machine())
    return {"device": args.device, "device_name": name, "torch": torch.__version__, "model": model,
            "model_id": checkpoint.model_id, "dtype": dtype_name(resolve_dtype(args.dtype, args.device)),
            "kv_bytes_per_token": page_bytes // block_size, "block_size": block_size,
            "settings": {k: getattr(args, k) for k in
                         ("system_tokens", "question_tokens", "turns", "repeats", "threads")}}


def run(args: argparse.Namespace) -> int:
    import torch

    from engine.config import EngineConfig
    from engine.dtype import resolve_dtype
    from engine.model.kv_cache import PageLayout

    block_size = EngineConfig().block_size
    check(args, block_size)
    torch.set_num_threads(args.threads)
    checkpoint, model = load(args)
    m = checkpoint.config
    page_bytes = PageLayout(m.num_layers, block_size, m.num_kv_heads, m.head_dim,
                            resolve_dtype(args.dtype, args.device)).nbytes
    result = header(args, model, checkpoint, page_bytes, block_size)
    num_blocks = pool_blocks(args, block_size)
    with tempfile.TemporaryDirectory(prefix="kvtier-ttft-") as tmp:
        socket = str(Path(tmp) / "data.sock")
        settings = service_settings(args, page_bytes, block_size, socket)
        hbm_dram_gb = round(4 * stored_bytes(page_bytes) / 2**30, 6)  # 4 blocks: the rest goes to HBM
        with services(Path(tmp), settings, args.device, hbm_dram_gb) as (service, hbm_settings):
            result |= {"engine_num_blocks": num_blocks,
                       "service": {k: settings[k] for k in ("dram_gb", "flash_gb")}}
            hbm_socket = None
            if hbm_settings:
                result["hbm_service"] = {k: hbm_settings[k] for k in ("dram_gb", "hbm_gb")}
                hbm_socket = hbm_settings["unix_socket"]
            b = Bench(checkpoint, args, service, socket, num_blocks, hbm_socket=hbm_socket)
            runs = []
            for r in range(args.repeats):
                print(f"system-prompt run {r + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                runs.append(system_prompt_case(b, seed=1000 + r))
            print(f"{args.turns}-turn chat, with and without the cache ...", file=sys.stderr, flush=True)
            chats = [chat_case(b, 7 + r) for r in range(num_chats(args.repeats))]
    field, copy = COPIES[args.device]
    nbytes = int(statistics.median(r["loaded_bytes_dram"] for r in runs))
    if nbytes == 0:
        raise RuntimeError(f"the DRAM hit loaded nothing, so there is no floor: {runs}")
    copies = {field: copy(nbytes, args.device)}
    if hbm_socket:
        copies[HBM_COPY[0]] = HBM_COPY[1](nbytes, args.device)
    result |= summarize(runs, chats, copies, TARGETS[args.device])
    print_table(result, field)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def services(tmp: Path, settings: dict, device: str, hbm_dram_gb: float):
    """The service (``settings``), and on CUDA the HBM case's: its DRAM ``hbm_dram_gb``,
    its HBM as large as the other's DRAM, no flash. Yields the first and the second's
    settings (``None`` off CUDA); both stop on exit."""
    from cacheserver.process import ServiceProcess

    with contextlib.ExitStack() as stack:
        service = ServiceProcess(tmp, settings).start()
        stack.callback(service.stop)
        hbm_settings = None
        if device == "cuda":
            (tmp / "hbm").mkdir()
            hbm_settings = {"unix_socket": str(tmp / "hbm" / "data.sock"), "dram_gb": hbm_dram_gb,
                            "hbm_gb": settings["dram_gb"], "flash_gb": 0}
            stack.callback(ServiceProcess(tmp / "hbm", hbm_settings).start().stop)
        yield service, hbm_settings


def summarize(runs: list[dict], chats: list[tuple[list[float], list[float]]], copies: dict[str, float],
              targets: dict[str, float]) -> dict:
    """Medians over the runs, the floors from the copy rates (bytes/s: the first for every
    hit, ``HBM_COPY``'s for the hbm one), the ratios, and which of ``targets`` (ratio ->
    most) they meet."""
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if not k.startswith("tiers_")}
    cases, hits = ran(runs[0])
    out: dict[str, Any] = {f"ttft_{c}_s": med[c] for c in cases}
    for c in hits:
        bandwidth = copies[HBM_COPY[0]] if c == "hbm" else next(iter(copies.values()))
        out[f"loaded_bytes_{c}"] = int(med[f"loaded_bytes_{c}"])
        out[f"mapped_bytes_{c}"] = int(med[f"mapped_bytes_{c}"])
        out[f"floor_{c}_s"] = out[f"loaded_bytes_{c}"] / bandwidth + med["local"]
    out |= {name: rate / 1e9 for name, rate in copies.items()}
    out["turn_ttft_cached_s"] = [statistics.median(t) for t in zip(*(c for c, _ in chats), strict=True)]
    out["turn_ttft_uncached_s"] = [statistics.median(t) for t in zip(*(u for _, u in chats), strict=True)]
    ratios = {f"{c}_vs_cold": out[f"ttft_{c}_s"] / out["ttft_cold_s"] for c in cases[1:]}
    ratios |= {f"{c}_vs_floor": out[f"ttft_{c}_s"] / out[f"floor_{c}_s"] for c in hits}
    n = len(out["turn_ttft_cached_s"])
    for kind in ("cached", "uncached"):
        turns = out[f"turn_ttft_{kind}_s"]
        ratios[f"turn{n}_vs_turn1_{kind}"] = turns[-1] / turns[0]
    out["ratios"] = ratios
    out["targets"] = targets
    out["targets_met"] = {k: ratios[k] <= v for k, v in targets.items() if k in ratios}
    out["runs"] = runs
    return out


def ran(run: dict) -> tuple[list[str], list[str]]:
    """The cases a run has (hbm on CUDA only), and which of them are hits."""
    cases = [c for c in CASES if c in run or f"ttft_{c}_s" in run]
    return cases, [c for c in cases if c in HIT_CASES]


def print_table(r: dict, copy_field: str) -> None:
    s = r["settings"]
    print(f"{r['model']} ({r['dtype']}) on {r['device']} ({r['device_name']}), torch {r['torch']}")
    print(f"TTFT, {s['system_tokens']}-token system prompt + {s['question_tokens']}-token question:")
    cases, hits = ran(r)
    for case in cases:
        extra = ""
        if case in hits:
            extra = (f"   floor {r[f'floor_{case}_s']:.3f} s ({r['ratios'][f'{case}_vs_floor']:.2f}x floor); "
                     f"{r[f'loaded_bytes_{case}'] / 1e6:.1f} MB loaded, "
                     f"{r[f'mapped_bytes_{case}'] / 1e6:.1f} MB of it from shared memory")
        ratio = "" if case == "cold" else f"  ({r['ratios'][f'{case}_vs_cold'] * 100:.1f}% of cold)"
        print(f"  {case:<8} {r[f'ttft_{case}_s']:.3f} s{ratio}{extra}")
    print(f"  floor copy bandwidth ({copy_field}) {r[copy_field]:.1f} GB/s")
    if HBM_COPY[0] in r:
        print(f"  hbm floor copy bandwidth ({HBM_COPY[0]}) {r[HBM_COPY[0]]:.1f} GB/s")
    print(f"{s['turns']}-turn chat, TTFT per turn (s):")
    print("  turn      " + " ".join(f"{i + 1:>6}" for i in range(len(r["turn_ttft_cached_s"]))))
    print("  cached    " + " ".join(f"{t:6.3f}" for t in r["turn_ttft_cached_s"]))
    print("  uncached  " + " ".join(f"{t:6.3f}" for t in r["turn_ttft_uncached_s"]))
    print(f"targets ({r['device']}) met: "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["targets_met"].items()))


def plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = range(1, len(r["turn_ttft_cached_s"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(turns, r["turn_ttft_uncached_s"], "o-", label="without the cache")
    ax.plot(turns, r["turn_ttft_cached_s"], "o-", label="with the cache")
    ax.set_xlabel("turn")
    ax.set_ylabel("time to first token (s)")
    ax.set_title(f"{len(turns)}-turn chat, ~{TURN_USER_TOKENS + TURN_REPLY_TOKENS} new tokens a turn "
                 f"({r['model']}, {r['device']})")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
