"""``kvtier up``: the whole stack (cache service, engine replicas, router) in one command."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the cache service, engine replicas and the router",
                       description="Start the cache service, N engine replicas and the router, wait until "
                       "all are healthy, print the URLs, and stop them all on Ctrl-C or SIGTERM.")
    p.add_argument("--port", type=int, default=8000, help="the router's port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address everything listens on (default 127.0.0.1)")
    p.add_argument("--replicas", type=int, default=1, help="engine replicas (default 1)")
    p.add_argument("--data-dir", default=".kvtier", help="state and logs (default ./.kvtier)")
    p.add_argument("--model", help="GGUF file or Hugging Face folder (default: the bundled SmolLM2)")
    p.add_argument("--kv-cache-gb", type=float, default=1.0, help="each replica's KV pool (default 1)")
    p.add_argument("--device", default="auto",
                   help="every replica's device: auto (a CUDA GPU if there is one), cpu, cuda or cuda:N")
    p.add_argument("--dram-gb", type=float, default=2.0, help="cache service DRAM tier (default 2)")
    p.add_argument("--flash-gb", type=float, default=8.0, help="cache service flash tier (default 8)")
    p.add_argument("--remote", default="", metavar="URL[,URL...]",
                   help="the cache service's remote tier, shared with other hosts: Redis Cluster or "
                   "Redis/Valkey URLs (kvtier serve --remote; see docs/remote.md)")
    p.add_argument("--pin-system-prompt", metavar="FILE",
                   help="each replica prefills this system prompt at start and pins its blocks")
    p.add_argument("--block-hash", default="xxh3_128", choices=("xxh3_128", "sha256"),
                   help="every replica's block key hash (sha256 with --hash-secret-file for "
                   "distrustful tenants)")
    p.add_argument("--hash-secret-file", help="secret hash seed file every replica uses")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.stack.supervisor import Stack, StackConfig, run_until_signal

    config = StackConfig(
        host=args.host, port=args.port, replicas=args.replicas, data_dir=args.data_dir, model=args.model,
        kv_cache_gb=args.kv_cache_gb, device=args.device, dram_gb=args.dram_gb, flash_gb=args.flash_gb,
        remote=args.remote,
        pin_system_prompt=args.pin_system_prompt, block_hash=args.block_hash,
        hash_secret_file=args.hash_secret_file,
    )
    return run_until_signal(Stack(config))
