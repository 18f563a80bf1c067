"""Time to first token with and without the cache, SmolLM2 on this machine, in one run.

Engines run in this process; the cache service is a real ``kvtier serve`` child process.

- A 2,048-token system prompt and a 64-token question: TTFT **cold** (an engine that has
  seen nothing); with a **local**-pool hit (the same engine again, another question);
  with a hit from the service's **DRAM** (a fresh engine, the warm service); with a hit
  from **flash** (the service restarted: its DRAM empty, its LMDB full).
- An 8-turn chat, about 200 new tokens a turn (a user message, then the reply the model
  writes): TTFT of each turn on one engine (the router keeps a conversation on its
  replica) with the cache (its prefix cache and the service) and without (neither).
- The **floor** of each hit: the bytes loaded divided by the copy bandwidth measured here
  (numpy, same bytes) plus the time to prefill the uncached suffix (the local-hit TTFT,
  where nothing is loaded). ``*_vs_floor`` is how far the measurement is above it.

TTFT is from ``add_request`` to the first token out of ``step``, fetching included; each
figure is the median of ``--repeats`` runs, each with its own fresh engines and questions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

SYSTEM_TOKENS, QUESTION_TOKENS = 2048, 64
TURNS, TURN_USER_TOKENS, TURN_REPLY_TOKENS = 8, 150, 50
TARGETS = {"dram_vs_cold": 0.10, "flash_vs_cold": 0.15, "dram_vs_floor": 2.0, "flash_vs_floor": 2.0,
           "turn8_vs_turn1_cached": 1.5}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write the results here")
    p.add_argument("--plot", metavar="FILE.png", help="plot TTFT per turn with and without the cache")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure; the median counts")
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", default="auto", help="engine dtype (default auto)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch CPU threads (default 2)")


class Bench:
    """Engines built from one loaded checkpoint, and the service they share."""

    def __init__(self, checkpoint, dtype: str, service):
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.service = service
        self.vocab = checkpoint.config.vocab_size

    def engine(self, cache: bool = True, service: bool = True):
        from engine.config import EngineConfig
        from engine.runtime.connector import CacheConnector, ConnectorConfig
        from engine.runtime.llm_engine import LLMEngine

        connector = CacheConnector(ConnectorConfig(self.service.data_url, fetch_timeout_s=30)) \
            if cache and service else None
        config = EngineConfig(dtype=self.dtype, kv_cache_gb=0.5, enable_prefix_caching=cache)
        return LLMEngine(config, self.checkpoint, connector)

    def tokens(self, n: int, seed: int) -> list[int]:
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(100, self.vocab - 100, (n,), generator=g).tolist()


def ttft(engine, prompt: list[int]) -> float:
    from engine.runtime.sampling_params import SamplingParams

    start = time.perf_counter()
    request = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=1))
    while True:
        for out in engine.step():
            if out.request_id == request:
                return time.perf_counter() - start


def generate(engine, prompt: list[int], n: int) -> list[int]:
    from engine.runtime.sampling_params import SamplingParams

    out = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))[0]
    return out.token_ids


def close(engine) -> None:
    if engine.connector is not None:
        engine.connector.flush(60)
        engine.connector.close()


def system_prompt_case(b: Bench, seed: int) -> dict[str, float]:
    """One run of cold / local / DRAM / flash for one system prompt."""
    system = b.tokens(SYSTEM_TOKENS, seed)
    q = [b.tokens(QUESTION_TOKENS, seed * 10 + i) for i in range(4)]
    first = b.engine()
    cold = ttft(first, system + q[0])
    local = ttft(first, system + q[1])
    close(first)  # its blocks are in the service now
    fresh = b.engine()
    dram = ttft(fresh, system + q[2])
    fetched = fresh.connector.stats.fetched_bytes
    close(fresh)
    b.service.restart()  # SIGTERM copies DRAM to flash; the new process starts with DRAM empty
    after = b.engine()
    flash = ttft(after, system + q[3])
    close(after)
    return {"cold": cold, "local": local, "dram": dram, "flash": flash, "fetched_bytes": fetched}


def chat_case(b: Bench, seed: int) -> tuple[list[float], list[float]]:
    """TTFT of each turn of an 8-turn chat on one engine (the router keeps a conversation
    on its replica), with its prefix cache and the service, and without either; both see
    the same history, whose replies the cached engine writes (as a replica does)."""
    history = b.tokens(TURN_USER_TOKENS, seed)
    cached, uncached = b.engine(cache=True), b.engine(cache=False)
    times: tuple[list[float], list[float]] = ([], [])
    for turn in range(TURNS):
        times[0].append(ttft(cached, history))
        times[1].append(ttft(uncached, history))
        reply = generate(cached, history, TURN_REPLY_TOKENS)
        history = history + reply + b.tokens(TURN_USER_TOKENS, seed * 100 + turn)
    close(cached)
    return times


def copy_bandwidth(nbytes: int) -> float:
    """Bytes per second of a numpy copy of ``nbytes`` (the floor's load rate)."""
    import numpy as np

    src = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    dst = np.empty_like(src)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return nbytes / statistics.median(times)


def run(args: argparse.Namespace) -> int:
    import torch

    from cacheserver.process import ServiceProcess
    from engine.dtype import resolve_dtype
    from engine.model.loader import load_checkpoint, resolve_model_path

    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, "cpu")
    print(f"loading {resolve_model_path(args.model).name} ({dtype}) ...", file=sys.stderr, flush=True)
    checkpoint = load_checkpoint(str(resolve_model_path(args.model)), dtype)
    with tempfile.TemporaryDirectory(prefix="kvtier-ttft-") as tmp:
        service = ServiceProcess(Path(tmp), {"dram_gb": 1, "flash_gb": 4}).start()
        try:
            b = Bench(checkpoint, args.dtype, service)
            runs = []
            for r in range(args.repeats):
                print(f"system-prompt run {r + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                runs.append(system_prompt_case(b, seed=1000 + r))
            print("8-turn chat, with and without the cache ...", file=sys.stderr, flush=True)
            chats = [chat_case(b, 7 + r) for r in range(max(1, args.repeats // 2))]
            cached, uncached = [c for c, _ in chats], [u for _, u in chats]
        finally:
            service.stop()
    result = summarize(runs, cached, uncached)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def summarize(runs: list[dict], cached: list[list[float]], uncached: list[list[float]]) -> dict:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    bandwidth = copy_bandwidth(int(med["fetched_bytes"]))
    load = med["fetched_bytes"] / bandwidth
    out = {
        "ttft_cold_s": med["cold"], "ttft_local_s": med["local"], "ttft_dram_s": med["dram"],
        "ttft_flash_s": med["flash"], "loaded_bytes": int(med["fetched_bytes"]),
        "copy_bandwidth_gbps": bandwidth / 1e9,
        "floor_dram_s": load + med["local"], "floor_flash_s": load + med["local"],
        "turn_ttft_cached_s": [statistics.median(t) for t in zip(*cached, strict=True)],
        "turn_ttft_uncached_s": [statistics.median(t) for t in zip(*uncached, strict=True)],
        "system_tokens": SYSTEM_TOKENS, "question_tokens": QUESTION_TOKENS,
    }
    turns = out["turn_ttft_cached_s"]
    ratios = {
        "local_vs_cold": out["ttft_local_s"] / out["ttft_cold_s"],
        "dram_vs_cold": out["ttft_dram_s"] / out["ttft_cold_s"],
        "flash_vs_cold": out["ttft_flash_s"] / out["ttft_cold_s"],
        "dram_vs_floor": out["ttft_dram_s"] / out["floor_dram_s"],
        "flash_vs_floor": out["ttft_flash_s"] / out["floor_flash_s"],
        "turn8_vs_turn1_cached": turns[-1] / turns[0],
        "turn8_vs_turn1_uncached": out["turn_ttft_uncached_s"][-1] / out["turn_ttft_uncached_s"][0],
    }
    out["ratios"] = ratios
    out["targets_met"] = {k: ratios[k] <= v for k, v in TARGETS.items()}
    return out


def print_table(r: dict) -> None:
    print(f"TTFT, {r['system_tokens']}-token system prompt + {r['question_tokens']}-token question:")
    for case in ("cold", "local", "dram", "flash"):
        extra = ""
        if case in ("dram", "flash"):
            extra = f"   floor {r[f'floor_{case}_s']:.3f} s ({r['ratios'][f'{case}_vs_floor']:.2f}x floor)"
        ratio = "" if case == "cold" else f"  ({r['ratios'][f'{case}_vs_cold'] * 100:.1f}% of cold)"
        print(f"  {case:<6} {r[f'ttft_{case}_s']:.3f} s{ratio}{extra}")
    print(f"  loaded {r['loaded_bytes'] / 1e6:.1f} MB; copy bandwidth {r['copy_bandwidth_gbps']:.1f} GB/s")
    print("8-turn chat, TTFT per turn (s):")
    print("  turn      " + " ".join(f"{i + 1:>6}" for i in range(len(r["turn_ttft_cached_s"]))))
    print("  cached    " + " ".join(f"{t:6.3f}" for t in r["turn_ttft_cached_s"]))
    print("  uncached  " + " ".join(f"{t:6.3f}" for t in r["turn_ttft_uncached_s"]))
    print("targets met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["targets_met"].items()))


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
    ax.set_title(f"8-turn chat, ~{TURN_USER_TOKENS + TURN_REPLY_TOKENS} new tokens a turn (SmolLM2)")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
