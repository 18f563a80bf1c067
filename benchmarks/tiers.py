"""Per-tier get and put throughput beside the memory and LMDB limits, in one run.

For each block size, the same payloads go through:

- ``dram``: the ``TieredStore`` with a DRAM tier only (``get_into`` into a reused arena of
  one batch, ``put`` of batches), beside ``memcpy``: plain numpy copies of the same bytes
  into a preallocated buffer of the same size (the memory-bandwidth limit);
- ``flash``: the store with an LMDB flash tier only (checksummed records, one write
  transaction per batch), beside ``raw_lmdb``: plain LMDB get/put of the same values with
  no kvtier logic (the faster of a zero-copy read copied into the arena and a plain
  ``txn.get``), the flash limit;
- ``hbm`` too where CUDA exists.

A large batch's gets and DRAM puts spread over the threads of ``tiers.parallel``; so do
the ``memcpy`` copies and ``raw_lmdb`` gets beside them, so each limit is what the same
threads can do.

Throughput is payload bytes over the median of several rounds. Ratios are what count:
every figure is measured in the same process on the same bytes, moments apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

SIZES = {"64KiB": 64 << 10, "360KiB": 360 << 10, "2MiB": 2 << 20}
BATCH = 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--working-set-mb", type=int, default=192,
                   help="bytes of blocks per size (default 192 MiB: well past the CPU caches)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per measurement (median)")
    p.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated subset of {list(SIZES)}")


def run(args: argparse.Namespace) -> int:
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES]
    if unknown:
        raise ValueError(f"unknown block sizes {unknown}; choose from {list(SIZES)}")
    results = []
    for name in names:
        print(f"measuring {name} blocks ...", file=sys.stderr, flush=True)
        row = measure(SIZES[name], args.working_set_mb << 20, args.rounds)
        results.append({"block": name, **row})
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "tiers", "batch": BATCH, "working_set_mb": args.working_set_mb,
                       "rounds": args.rounds, "results": results}, f, indent=2)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def measure(size: int, working_set: int, rounds: int) -> dict:
    """Every figure for one block size; contenders alternate within each round, so load
    from elsewhere on the machine hits them alike."""
    import numpy as np
    import torch

    n = max(2 * BATCH, working_set // size // BATCH * BATCH)
    data = np.random.default_rng(0).integers(0, 256, (n, size), dtype=np.uint8)
    w = _Workload(data, BATCH)
    gb = n * size / 1e9
    with tempfile.TemporaryDirectory(prefix="kvtier-bench-") as tmp:
        stores = {
            "dram": _StoreContender(w, lambda: _dram(2 * n * size)),
            "flash": _StoreContender(w, lambda: _flash(tmp, 2 * n * (size + 8192))),
        }
        if torch.cuda.is_available():
            stores["hbm"] = _StoreContender(w, lambda: _hbm(2 * n * size))
        raw = _RawLmdb(w, tmp)
        memcpy = _Memcpy(w)
        puts = {f"{name}_put": c.put for name, c in stores.items()}
        puts |= {"raw_lmdb_put": raw.put, "memcpy_put": memcpy.put}
        gets = {f"{name}_get": c.get for name, c in stores.items()}
        gets |= {"raw_lmdb_get": raw.get, "raw_lmdb_get_bytes": raw.get_bytes, "memcpy": memcpy.get}
        resets = [c.reset for c in stores.values()] + [raw.reset]
        put_times = _interleaved(puts, max(1, rounds // 2 + 1), before_round=resets)
        for fn in gets.values():  # warm: the first read of an LMDB page maps it in
            fn()
        get_times = _interleaved(gets, rounds)
        for c in stores.values():
            c.close()
        raw.close()
    row = {"block_bytes": size, "blocks": n}
    row |= {f"{name}_gbps": gb / t for name, t in {**put_times, **get_times}.items()}
    # The flash limit is the faster of LMDB's two ways to read.
    row["raw_lmdb_get_gbps"] = max(row["raw_lmdb_get_gbps"], row.pop("raw_lmdb_get_bytes_gbps"))
    row["dram_get_vs_memcpy"] = row["dram_get_gbps"] / row["memcpy_gbps"]
    row["flash_get_vs_raw_lmdb"] = row["flash_get_gbps"] / row["raw_lmdb_get_gbps"]
    return row


def _interleaved(fns: dict, rounds: int, before_round=()) -> dict[str, float]:
    """Median seconds of each function over ``rounds``, calling them in turn each round;
    ``before_round`` functions run untimed at the start of every round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for prepare in before_round:
            prepare()
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


class _Workload:
    """The blocks of one size: payloads, keys, batches, and the reused read arena."""

    def __init__(self, data, batch: int):
        import numpy as np

        self.data = data  # [n, size] uint8
        self.payloads = [row.tobytes() for row in data]
        self.keys = [i.to_bytes(16, "little") for i in range(1, len(data) + 1)]
        self.batches = [slice(i, i + batch) for i in range(0, len(data), batch)]
        self.arena = np.empty(batch * data.shape[1], dtype=np.uint8)


def _dram(capacity: int):
    from tiers.slab import dram_tier

    return dram_tier(capacity)


def _hbm(capacity: int):
    from tiers.slab import hbm_tier

    return hbm_tier(capacity)


def _flash(tmp: str, capacity: int):
    from tiers.flash import FlashTier

    return FlashTier(tempfile.mkdtemp(dir=tmp), capacity)


class _StoreContender:
    """A single-tier ``TieredStore``: ``reset`` (untimed) makes a fresh one, ``put`` fills
    it, ``get`` reads it back."""

    def __init__(self, w: _Workload, make_tier):
        from tiers.base import make_block

        self.w = w
        self.make_tier = make_tier
        self.blocks = [make_block(k, bytes(16), 0, p) for k, p in zip(w.keys, w.payloads, strict=True)]
        self.store = None

    def reset(self) -> None:
        from tiers.store import TieredStore

        self.close()
        self.store = TieredStore([self.make_tier()])

    def put(self) -> None:
        for s in self.w.batches:
            self.store.put(self.blocks[s])

    def get(self) -> None:
        view = memoryview(self.w.arena)
        for s in self.w.batches:
            got = self.store.get_into(self.w.keys[s], view)
            if len(got) != len(self.w.keys[s]) or any(g is None for g in got):
                raise RuntimeError("bug: a stored block was not returned")

    def close(self) -> None:
        if self.store is not None:
            self.store.close(persist=False)
            self.store = None


class _RawLmdb:
    """Plain LMDB with the same values and batches, no kvtier logic: the flash limit."""

    def __init__(self, w: _Workload, tmp: str):
        self.w = w
        self.tmp = tmp
        self.env = None

    def reset(self) -> None:
        import lmdb

        self.close()
        size = len(self.w.payloads[0])
        self.env = lmdb.open(tempfile.mkdtemp(dir=self.tmp), sync=False, metasync=False,
                             readahead=False, map_size=2 * len(self.w.keys) * (size + 8192) + (64 << 20))

    def put(self) -> None:
        for s in self.w.batches:
            with self.env.begin(write=True) as txn:
                for key, payload in zip(self.w.keys[s], self.w.payloads[s], strict=True):
                    txn.put(key, payload)

    def get(self) -> None:
        """Zero-copy read, copied into the arena (over the store's copy threads): what the
        store does, minus the store."""
        from tiers import parallel

        view = memoryview(self.w.arena)
        size = self.w.data.shape[1]
        for s in self.w.batches:
            with self.env.begin(buffers=True) as txn:
                parallel.copy_all([(view[j * size : (j + 1) * size], txn.get(key))
                                   for j, key in enumerate(self.w.keys[s])])

    def get_bytes(self) -> None:
        for s in self.w.batches:
            with self.env.begin() as txn:
                for key in self.w.keys[s]:
                    txn.get(key)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None


class _Memcpy:
    """numpy copies of the same bytes into preallocated buffers: the memory limit."""

    def __init__(self, w: _Workload):
        import numpy as np

        self.w = w
        self.sink = np.zeros_like(w.data)

    def put(self) -> None:
        from tiers import parallel

        sink = memoryview(self.sink.reshape(-1))
        size = self.w.data.shape[1]
        for s in self.w.batches:
            parallel.copy_all([(sink[i * size : (i + 1) * size], self.w.payloads[i])
                               for i in range(s.start, s.stop)])

    def get(self) -> None:
        from tiers import parallel

        size = self.w.data.shape[1]
        arena = memoryview(self.w.arena)
        for s in self.w.batches:
            parallel.copy_all([(arena[j * size : (j + 1) * size], self.w.data[i])
                               for j, i in enumerate(range(s.start, s.stop))])


def print_table(results: list[dict]) -> None:
    cols = ["dram_get_gbps", "memcpy_gbps", "dram_get_vs_memcpy", "flash_get_gbps", "raw_lmdb_get_gbps",
            "flash_get_vs_raw_lmdb", "dram_put_gbps", "memcpy_put_gbps", "flash_put_gbps",
            "raw_lmdb_put_gbps"]
    if any("hbm_get_gbps" in r for r in results):
        cols += ["hbm_get_gbps", "hbm_put_gbps"]
    print(f"{'block':>8} " + " ".join(f"{c.replace('_gbps', ''):>22}" for c in cols))
    for r in results:
        print(f"{r['block']:>8} " + " ".join(f"{r[c]:>22.2f}" for c in cols))
    print("(GB/s; *_vs_* are ratios; targets: dram_get_vs_memcpy >= 0.70 and "
          "flash_get_vs_raw_lmdb >= 0.70 at 360KiB and 2MiB)")
