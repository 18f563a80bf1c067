"""``kvtier engine``: one engine replica behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from engine.cli import add_device_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engine", help="run an engine replica with an OpenAI-compatible API",
                       description="Serve /v1/chat/completions, /v1/completions, /v1/models, /healthz "
                       "and /metrics for one model.")
    p.add_argument("--model", help="GGUF file or Hugging Face folder (default: the bundled SmolLM2)")
    p.add_argument("--served-model-name", help="the name clients pass as `model` (default: from the file)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8100, help="port to listen on (default 8100)")
    add_device_arguments(p)
    p.add_argument("--kv-cache-gb", type=float, default=1.0, help="size of the paged KV pool (default 1)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV block (default 16)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="most sequences in a batch (default 64)")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--default-max-tokens", type=int, default=256,
                   help="max_tokens when a request gives none (default 256)")
    p.add_argument("--cache-url", help="the cache service's data plane (kvtier://HOST:PORT or "
                   "unix:///PATH; several, comma-separated, shard the blocks over those services by "
                   "a consistent-hash ring); without it only the local prefix cache is used")
    p.add_argument("--cache-timeout", type=float, default=2.0,
                   help="the longest a request waits for its cached prefix, in seconds (default 2)")
    p.add_argument("--pin-system-prompt", metavar="FILE",
                   help="prefill this system prompt at start and pin its blocks (locally and in the service)")
    p.add_argument("--pin-tier", help="service tier to pin it in (default: the service's top tier)")
    p.add_argument("--block-hash", default="xxh3_128", choices=("xxh3_128", "sha256"),
                   help="block key hash (sha256 with --hash-secret-file for distrustful tenants)")
    p.add_argument("--hash-secret-file", help="file holding a secret hash seed, the same on every replica")
    p.set_defaults(func=run)


def model_name(path: Path) -> str:
    """``SmolLM2-135M-Instruct`` from ``SmolLM2-135M-Instruct.Q4_1.gguf`` (or a folder name)."""
    name = path.name.removesuffix(".gguf")
    return re.sub(r"\.(Q\d\w*|I?Q\d\w*|F16|F32|BF16)$", "", name, flags=re.IGNORECASE)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.config import EngineConfig
    from engine.model.loader import resolve_model_path
    from engine.runtime.async_engine import AsyncEngine
    from engine.runtime.llm_engine import LLMEngine
    from engine.server.app import ServerConfig, create_app
    from hashing.keys import read_secret

    path = resolve_model_path(args.model)
    config = EngineConfig(model=str(path), dtype=args.dtype, device=args.device,
                          cuda_graphs=not args.no_cuda_graphs, block_size=args.block_size,
                          kv_cache_gb=args.kv_cache_gb, max_num_seqs=args.max_num_seqs,
                          max_num_batched_tokens=args.max_num_batched_tokens,
                          max_model_len=args.max_model_len, block_hash=args.block_hash,
                          hash_secret=read_secret(args.hash_secret_file))
    connector = None
    if args.cache_url:
        from engine.dtype import resolve_device
        from engine.runtime.connector import CacheConnector, ConnectorConfig

        device = resolve_device(args.device)
        connector = CacheConnector(ConnectorConfig(args.cache_url, fetch_timeout_s=args.cache_timeout,
                                                   device=device if device.startswith("cuda") else None))
    engine = LLMEngine(config, connector=connector)
    if args.pin_system_prompt:
        from engine.runtime.pinning import pin_system_prompt

        done = pin_system_prompt(engine, Path(args.pin_system_prompt).read_text(), args.pin_tier)
        print(f"kvtier engine: pinned the system prompt: {done}", flush=True)
    name = args.served_model_name or model_name(path)
    app = create_app(AsyncEngine(engine), ServerConfig(name, args.default_max_tokens))
    cache = f", cache service {args.cache_url}" if args.cache_url else ", no cache service"
    cache += f", block hash {config.block_hash}{' with a secret' if config.hash_secret else ''}"
    print(f"kvtier engine: {name} ({engine.device}, {engine.dtype}, model_id {engine.model_id}, kv_layout "
          f"{engine.kv_layout}{cache}) on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)  # the CLI's logging setup
    return 0
