"""``kvtier serve``: run the cache service (REST admin API and binary data plane)."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the cache service", description=(
        "Run the cache service. Settings come from these flags, then KVTIER_* environment "
        "variables (e.g. KVTIER_DRAM_GB), then the --config TOML file, then defaults."))
    p.add_argument("--config", help="TOML file of settings (same names as the flags, with _)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="REST admin API port (default 8300)")
    p.add_argument("--data-port", type=int, help="binary data-plane port (default 8301; 0: none)")
    p.add_argument("--unix-socket", help="also serve the data plane on this Unix socket (owner only)")
    p.add_argument("--shared-memory", action=argparse.BooleanOptionalAction, default=None,
                   help="let clients on the Unix socket map the DRAM tier read-only and copy blocks "
                   "straight out of it, and engines on the HBM tier's GPU open it by CUDA IPC "
                   "(default on; x86-64 Linux)")
    p.add_argument("--dram-gb", type=float, help="DRAM tier size in GiB (default 4)")
    p.add_argument("--hbm-gb", type=float, help="GPU HBM tier size in GiB (CUDA only; default 0)")
    p.add_argument("--flash-dir", help="LMDB folder of the flash tier (default ./.kvtier/flash)")
    p.add_argument("--flash-gb", type=float, help="flash tier size in GiB (default 16; 0: none)")
    p.add_argument("--policy", help="eviction policy: mq (default: recency within use-count classes; "
                   "up to 1.7x lru's memory per block), lru, slru, fifo, or adaptive (simulates six "
                   "shadow caches to choose an order: 10-19x lru's memory per block and 6-9x its "
                   "CPU; it learns off the store's lock); see docs/eviction.md")
    p.add_argument("--admin-token", help="token REST mutations need (or KVTIER_ADMIN_TOKEN)")
    p.add_argument("--page-kb", type=int, help="DRAM/HBM page size in KiB (default 64)")
    p.add_argument("--max-frame-mb", type=int, help="largest data-plane frame body (default 256)")
    p.add_argument("--max-batch", type=int, help="most keys per data-plane request (default 4096)")
    p.add_argument("--max-rest-body-mb", type=int, help="largest REST request body (default 64)")
    p.add_argument("--flash-sync", action=argparse.BooleanOptionalAction, default=None,
                   help="durable mode: every put is written through to flash and synced before it "
                   "is acknowledged, so it survives a crash (slower puts; default off)")
    p.add_argument("--remote", metavar="URL[,URL...]",
                   help="remote tier below flash, shared by every cache service: Redis Cluster nodes or "
                   "one Redis/Valkey server (redis://[user:password@]host:port, rediss:// for TLS); "
                   "see docs/remote.md")
    p.add_argument("--remote-timeout-ms", type=int, help="remote round timeout (default 500)")
    p.add_argument("--remote-ttl-s", type=int, help="expiry of remote blocks (default 0: none, the "
                   "server's maxmemory policy evicts)")
    p.add_argument("--remote-queue-mb", type=int, help="write-behind queue to the remote tier; blocks "
                   "past it are dropped and counted (default 256)")
    p.add_argument("--inject-delay-ms", type=int,
                   help="for testing only: delay every data-plane request this long (default 0)")
    p.add_argument("--inject-garbage", type=float, metavar="RATE",
                   help="for testing only: replace this share (0-1) of data-plane replies with "
                   "corrupted frames (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cacheserver.config import load
    from cacheserver.service import Service

    config = load(vars(args), os.environ, args.config)
    return Service(config).run()
