"""Data-plane throughput and latency: kvtier (TCP, Unix socket, into KV pages) beside Redis and memcpy.

One run starts a real ``kvtier serve`` and a real ``redis-server`` (installed with apt if
missing), then for each block size and client count measures batches of ``--batch``
blocks: get and put GB/s and per-batch p50/p99 latency, over kvtier TCP, kvtier Unix
socket and Redis (redis-py, MGET and pipelined SETs, hiredis parser when installed), and
a plain numpy copy of the same bytes into a preallocated buffer (``memcpy``, the ceiling
of one thread) beside the same blocks copied over the threads that spread kvtier's own
large copies (``memcpy_threads``, ``tiers.parallel``): the memory-bandwidth ceilings. The
systems take turns in short rounds and the median round counts, so a noisy neighbour hurts
them alike.

``get`` returns payloads in fresh buffers (like redis-py's MGET); ``get_into`` receives
them into buffers the caller preallocated (as an engine's KV staging pages are), which
compares with the memcpy line. ``unix_*`` clients use the Unix socket's byte stream;
``shm_*`` clients on the same socket map the service's DRAM tier and copy blocks out of it
(the same-host path). ``bare_tcp`` and ``bare_unix`` send the batch's bytes between two
processes over a bare socket, with no protocol and no store: the ceiling any socket
protocol can reach on this machine. Puts to kvtier use fresh keys every batch (each put really
stores, and DRAM evicts as it fills); puts to Redis overwrite the same keys (Redis copies
every SET, and memory stays bounded).

``shm_pages`` and ``socket_pages`` are the engine's load path: ``get_mapped`` then
``PageLoader.load`` into preallocated KV pages on ``--device`` (on a GPU, DMA out of the
service's registered slab), each load waited for and checked whole; ``shm_pages`` on the
Unix socket with shared memory (a same-host engine), ``socket_pages`` over TCP (an engine
on another host). Their ceiling is memcpy on the CPU, and on a GPU ``pinned_h2d`` (the
same bytes from pinned host memory into device memory) beside ``d2d`` (device to device).
``ipc_pages`` (CUDA only) is the same load from a second service whose DRAM holds one
block, so what it is sent lies in its HBM tier: the engine opens that slab by CUDA IPC and
copies GPU to GPU; its ceiling is ``d2d``. ``--device cuda`` runs only those five by
default: Redis and the socket-only paths say nothing about GPU pages (and the GPU machine
has no redis-server).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial

from cacheserver.process import free_port

KIB = 1024
SIZES = {"360KiB": 360 * KIB, "2MiB": 2048 * KIB}
TARGETS = {"kvtier_get_vs_redis": 2.0, "unix_get_vs_memcpy": 0.30, "shm_pages_vs_pinned_h2d": 0.80,
           "ipc_pages_vs_d2d": 0.50}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    parser.add_argument("--batch", type=int, default=16, help="blocks per request (default 16)")
    parser.add_argument("--clients", default="1,8", help="concurrent client counts (default 1,8)")
    parser.add_argument("--sizes", default="360KiB,2MiB", help=f"block sizes among {list(SIZES)}")
    parser.add_argument("--round-s", type=float, default=0.6, help="seconds per measurement round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the median counts")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the KV pages of shm_pages and socket_pages live (default cpu)")
    parser.add_argument("--systems", help=f"comma-separated, among {','.join(SYSTEMS)} (default: on cpu all "
                        f"but {','.join(CUDA_ONLY)}; on cuda {','.join(DEFAULT_SYSTEMS['cuda'])})")


# -- setup ------------------------------------------------------------------------------


def ensure_redis_server() -> str:
    """Path of ``redis-server``, installing the Debian package when it is missing."""
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ValueError("redis-server is not installed; install it (e.g. 'apt-get install redis-server')")
    print("redis-server is missing: installing it with apt-get (once) ...", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        raise ValueError("apt-get ran but redis-server is still missing; install it by hand")
    return path


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s")


def start_kvtier(stack: ExitStack, folder: str, dram_gb: float, hbm_gb: float = 0) -> tuple[str, str]:
    data_port, sock = free_port(), os.path.join(folder, "kvtier.sock")
    cmd = [sys.executable, "-m", "clients.cli", "--log-level", "WARNING", "serve", "--port", str(free_port()),
           "--data-port", str(data_port), "--unix-socket", sock, "--dram-gb", str(dram_gb),
           "--hbm-gb", str(hbm_gb), "--flash-gb", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    stack.callback(_stop, proc)
    from clients.cache_client import CacheClient

    url = f"kvtier://127.0.0.1:{data_port}"
    wait_for(lambda: CacheClient(url).ping() and os.path.exists(sock), "kvtier serve")
    return url, f"unix://{sock}"


def start_redis(stack: ExitStack, folder: str) -> int:
    port = free_port()
    proc = subprocess.Popen([ensure_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", folder, "--protected-mode", "no"],
                            stdout=subprocess.DEVNULL)
    stack.callback(_stop, proc)
    try:
        import redis
    except ImportError:
        raise ValueError("the Redis comparison needs redis-py: pip install -e '.[bench]'") from None

    def up() -> bool:
        try:
            return redis.Redis(port=port).ping()
        except redis.ConnectionError:
            return False

    wait_for(up, "redis-server")
    return port


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- measurement ------------------------------------------------------------------------


def measure(workers: list[Callable[[], None]], batch_bytes: int, seconds: float) -> dict:
    """Run each worker's batch call in its own thread for ``seconds``; GB/s and latency."""
    latencies: list[list[float]] = [[] for _ in workers]
    start = threading.Barrier(len(workers) + 1)
    stop_at = [0.0]

    def loop(i: int) -> None:
        call, lat = workers[i], latencies[i]
        start.wait()
        while True:
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            if t1 >= stop_at[0]:
                return

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = sorted(x for lat in latencies for x in lat)
    p99 = flat[min(len(flat) - 1, int(len(flat) * 0.99))]
    return {"gbps": len(flat) * batch_bytes / elapsed / 1e9, "p50_ms": 1e3 * flat[len(flat) // 2],
            "p99_ms": 1e3 * p99}


class Payloads:
    """``batch`` distinct payloads of ``size`` bytes, shared by every client."""

    def __init__(self, batch: int, size: int):
        import numpy as np

        rng = np.random.default_rng(0)
        self.blocks = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for _ in range(batch)]
        self.size = size
        self.batch_bytes = batch * size


def key_of(*parts: object) -> bytes:
    import xxhash

    return xxhash.xxh3_128_digest(repr(parts).encode())


def kvtier_workers(url: str, clients: int, data: Payloads, op: str, shared: bool = False) -> tuple:
    """``op``: "get" (payloads in fresh buffers), "get_into" (into preallocated ones), "put";
    ``shared``: a ``unix://`` client copies blocks out of the service's shared memory."""
    from clients.cache_client import CacheClient
    from clients.guard import ClientOptions

    made, workers = [], []
    root = key_of("root")
    for c in range(clients):
        client = CacheClient(url, ClientOptions(timeout=30.0, shared_memory=shared))
        made.append(client)
        if op.startswith("get"):
            keys = stored_keys(client, url, data, c, shared)
            if op == "get":
                workers.append(lambda client=client, keys=keys: _check_get(client.get(keys), len(keys)))
            else:
                outs = [memoryview(bytearray(data.size)) for _ in keys]
                workers.append(lambda client=client, keys=keys, outs=outs: _check_get(
                    client.get_into(keys, outs), len(keys)))
        else:
            counter = iter(range(1 << 62))
            workers.append(lambda client=client, c=c, counter=counter: client.put(
                [(key_of(url, c, next(counter)), root, 0, b) for b in data.blocks]))
    return workers, made


def stored_keys(client, url: str, data: Payloads, c: int, shared: bool) -> list[bytes]:
    """Client ``c``'s keys of the payloads, put and pinned (so the put rounds' churn never
    evicts what the get rounds read), after one block came back whole."""
    keys = [key_of("get", data.size, c, i) for i in range(len(data.blocks))]
    client.put([(k, key_of("root"), 0, b) for k, b in zip(keys, data.blocks, strict=True)])
    if client.pin(keys) != len(keys) or bytes(client.get(keys[:1])[0]) != data.blocks[0]:
        raise RuntimeError(f"kvtier at {url} did not round-trip a block")
    if shared and not client.counters.mapped_bytes:
        raise RuntimeError(f"kvtier at {url} offered no shared memory")
    return keys


class PageReader:
    """One engine's cache hits into its KV pages, as the engine loads them: ``get_mapped``,
    then ``PageLoader.load`` into pages of one preallocated pool, waited for and checked
    whole. Over ``unix://`` the blocks are copied out of the service's shared slab (on a
    GPU by DMA), over TCP out of the reply's bytes."""

    def __init__(self, url: str, data: Payloads, c: int, device: str, ipc: bool = False):
        import torch

        from clients.cache_client import CacheClient
        from clients.guard import ClientOptions
        from engine.runtime.page_loader import PageLoader

        self.client = CacheClient(url, ClientOptions(timeout=30.0, shared_memory=True,
                                                     device=device if ipc else None))
        self.keys = stored_keys(self.client, url, data, c, shared=url.startswith("unix://"))
        self.loader = PageLoader(device)
        self.pool = torch.zeros(len(self.keys), data.size, dtype=torch.uint8, device=device)  # [batch, size]
        self.pages = self.pool.unbind()
        self.on_gpu = 0  # blocks of the last load that came out of the service's GPU slab
        self()
        if not self.holds(data):
            raise RuntimeError(f"pages loaded from kvtier at {url} do not hold the payloads")
        if ipc and self.on_gpu < len(self.keys) // 2:
            raise RuntimeError(f"only {self.on_gpu} of {len(self.keys)} blocks came by CUDA IPC "
                               f"from kvtier at {url}")

    def __call__(self) -> None:
        from clients.shared import Mapped

        blocks = self.client.get_mapped(self.keys)
        _check_get(blocks, len(self.keys))
        load = self.loader.load(self.pages, blocks)
        load.wait()
        if not all(load.whole()):
            raise RuntimeError("a pinned block moved while it was copied into its page")
        self.on_gpu = sum(isinstance(b, Mapped) and b.slab.on_gpu for b in blocks)

    def holds(self, data: Payloads) -> bool:
        """Whether each page holds its payload, byte for byte."""
        return [bytes(page.cpu().numpy()) for page in self.pages] == data.blocks

    def close(self) -> None:
        self.client.close()


def page_workers(url: str, clients: int, data: Payloads, device: str, ipc: bool = False) -> tuple[list, list]:
    readers = [PageReader(url, data, c, device, ipc) for c in range(clients)]
    return readers, readers


def device_copy_workers(data: Payloads, device: str, source: str) -> tuple[list, list]:
    """The device's own copy of the batch's bytes into one device tensor, from pinned host
    memory (``source="host"``) or from device memory, synchronized: the pages' ceiling."""
    import torch

    src = torch.frombuffer(bytearray(b"".join(data.blocks)), dtype=torch.uint8)  # [batch * size]
    src = src.pin_memory() if source == "host" else src.to(device)
    dst = torch.empty_like(src, device=device)

    def copy() -> None:
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize(device)

    return [copy], []


def _check_get(payloads: list, n: int) -> None:
    if len(payloads) != n or any(p is None for p in payloads):
        raise RuntimeError("kvtier get missed blocks the benchmark had put (is DRAM big enough?)")


def redis_workers(port: int, clients: int, data: Payloads, op: str) -> tuple[list, list]:
    import redis

    made, workers = [], []
    for c in range(clients):
        r = redis.Redis(port=port)
        made.append(r)
        keys = [key_of("redis", c, i) for i in range(len(data.blocks))]

        def put(r=r, keys=keys) -> None:
            pipe = r.pipeline(transaction=False)
            for k, b in zip(keys, data.blocks, strict=True):
                pipe.set(k, b)
            pipe.execute()

        put()
        if r.get(keys[0]) != data.blocks[0]:
            raise RuntimeError("redis did not round-trip a block")
        workers.append(put if op == "put" else lambda r=r, keys=keys: r.mget(keys))
    return workers, made


def _bare_sender(listener, nbytes: int) -> None:
    """A child process that answers each 1-byte request with ``nbytes`` from one buffer,
    a thread per connection."""
    from cacheserver.framing import tune

    payload = memoryview(bytearray(os.urandom(1024)) * (nbytes // 1024 + 1))[:nbytes]

    def serve(conn) -> None:
        tune(conn)
        while conn.recv(1):
            conn.sendall(payload)

    while True:
        threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()


def bare_socket_workers(stack: ExitStack, folder: str, clients: int, data: Payloads, family: str) -> tuple:
    """The ceiling for any protocol over a socket: another process sends the batch's bytes
    over a bare TCP or Unix socket (no framing, no store) into a preallocated buffer."""
    import multiprocessing
    import socket

    from cacheserver.dataserver import tcp_listener, unix_listener
    from cacheserver.framing import recv_into_exact, tune

    if family == "tcp":
        listener = tcp_listener("127.0.0.1", 0)
        address, kind = listener.getsockname(), socket.AF_INET
    else:
        address, kind = os.path.join(folder, f"bare-{data.size}-{clients}.sock"), socket.AF_UNIX
        listener = unix_listener(address)
    workers, made = [], []
    child = multiprocessing.get_context("fork").Process(
        target=_bare_sender, args=(listener, data.batch_bytes), daemon=True)
    child.start()
    stack.callback(child.kill)
    for _ in range(clients):
        sock = socket.socket(kind, socket.SOCK_STREAM)
        sock.connect(address)
        tune(sock)
        made.append(sock)
        view = memoryview(bytearray(data.batch_bytes))

        def call(sock=sock, view=view) -> None:
            sock.sendall(b"g")
            recv_into_exact(sock, view)

        workers.append(call)
    listener.close()
    return workers, made


def memcpy_workers(clients: int, data: Payloads, spread: bool = False) -> tuple[list, list]:
    """The batch copied into a preallocated buffer: in one copy, or (``spread``) block by
    block over ``tiers.parallel``'s threads, as the shared-memory clients copy."""
    import numpy as np

    from tiers import parallel

    src = np.frombuffer(b"".join(data.blocks), dtype=np.uint8)
    workers = []
    for _ in range(clients):
        dst = np.empty_like(src)
        dst[:] = 1  # touch the pages once, as a preallocated buffer would be
        if spread:
            pairs = [(dst[i * data.size : (i + 1) * data.size], block) for i, block in enumerate(data.blocks)]
            workers.append(partial(parallel.copy_all, pairs))
        else:
            workers.append(partial(np.copyto, dst, src))
    return workers, []


@dataclass(frozen=True)
class Setup:
    """What one run's systems share: the service's URLs, Redis's port (None when no Redis
    system runs), where the pages live, and the run's cleanup stack and temp folder."""

    tcp: str
    unix: str
    hbm_unix: str | None  # the service whose blocks lie in HBM (ipc_pages only)
    redis_port: int | None
    device: str
    stack: ExitStack
    folder: str


# system -> its (workers, made) for (setup, clients, payloads); memcpy and the device's own
# copies run one client: they are the ceiling, not a load.
SYSTEMS: dict[str, Callable[[Setup, int, Payloads], tuple]] = {
    "kvtier_get": lambda s, n, data: kvtier_workers(s.tcp, n, data, "get"),
    "unix_get": lambda s, n, data: kvtier_workers(s.unix, n, data, "get"),
    "kvtier_get_into": lambda s, n, data: kvtier_workers(s.tcp, n, data, "get_into"),
    "unix_get_into": lambda s, n, data: kvtier_workers(s.unix, n, data, "get_into"),
    "shm_get": lambda s, n, data: kvtier_workers(s.unix, n, data, "get", True),
    "shm_get_into": lambda s, n, data: kvtier_workers(s.unix, n, data, "get_into", True),
    "shm_pages": lambda s, n, data: page_workers(s.unix, n, data, s.device),
    "socket_pages": lambda s, n, data: page_workers(s.tcp, n, data, s.device),
    "ipc_pages": lambda s, n, data: page_workers(s.hbm_unix, n, data, s.device, ipc=True),
    "redis_get": lambda s, n, data: redis_workers(s.redis_port, n, data, "get"),
    "memcpy": lambda s, n, data: memcpy_workers(1, data),
    "memcpy_threads": lambda s, n, data: memcpy_workers(1, data, spread=True),
    "pinned_h2d": lambda s, n, data: device_copy_workers(data, s.device, "host"),
    "d2d": lambda s, n, data: device_copy_workers(data, s.device, "device"),
    "bare_tcp": lambda s, n, data: bare_socket_workers(s.stack, s.folder, n, data, "tcp"),
    "bare_unix": lambda s, n, data: bare_socket_workers(s.stack, s.folder, n, data, "unix"),
    "kvtier_put": lambda s, n, data: kvtier_workers(s.tcp, n, data, "put"),
    "unix_put": lambda s, n, data: kvtier_workers(s.unix, n, data, "put"),
    "redis_put": lambda s, n, data: redis_workers(s.redis_port, n, data, "put"),
}
CUDA_ONLY = ("ipc_pages", "pinned_h2d", "d2d")
REDIS = ("redis_get", "redis_put")
DEFAULT_SYSTEMS = {"cpu": [name for name in SYSTEMS if name not in CUDA_ONLY],
                   "cuda": ["shm_pages", "socket_pages", "ipc_pages", "pinned_h2d", "d2d"]}


def chosen_systems(device: str, systems: str | None) -> list[str]:
    """The systems to measure, in ``SYSTEMS`` order; a bad choice raises ``ValueError``."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: PyTorch sees no CUDA device; use --device cpu")
    names = systems.split(",") if systems else DEFAULT_SYSTEMS[device]
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose among {list(SYSTEMS)}")
    if device == "cpu" and set(names) & set(CUDA_ONLY):
        raise ValueError(f"{list(CUDA_ONLY)} copy into GPU memory: use them with --device cuda")
    return [name for name in SYSTEMS if name in names]


def run_cell(systems: dict[str, Callable], data: Payloads, rounds: int, seconds: float) -> dict:
    """Every system in turn, ``rounds`` times; the median round of each."""
    samples: dict[str, list[dict]] = {name: [] for name in systems}
    built = {name: make() for name, make in systems.items()}
    for _ in range(rounds):
        for name, (workers, _) in built.items():
            samples[name].append(measure(workers, data.batch_bytes, seconds))
    for _, made in built.values():
        for client in made:
            client.close()
    out = {}
    for name, runs in samples.items():
        for field in ("gbps", "p50_ms", "p99_ms"):
            out[f"{name}_{field}"] = round(statistics.median(r[field] for r in runs), 3)
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from cacheserver.memory import keep_freed_buffers
    from tiers import parallel

    # Both clients (kvtier's and redis-py) allocate block-sized buffers per reply; this
    # process keeps freed ones for reuse, as kvtier serve does (see cacheserver.memory).
    keep_freed_buffers()
    names = chosen_systems(args.device, args.systems)
    counts = [int(c) for c in args.clients.split(",")]
    sizes = {name: SIZES[name] for name in args.sizes.split(",")}
    need = max(counts) * args.batch * max(sizes.values())
    results: dict[str, dict] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="kvtier-bench-") as folder:
        # One thread copies into the pages, as one does for memcpy: torch's intra-op pool,
        # spinning beside the service on a small host, starved it (loads fell to 0.05 GB/s).
        stack.callback(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)
        tcp, unix = start_kvtier(stack, folder, dram_gb=max(1.0, 4 * need / (1 << 30)))
        rport = start_redis(stack, folder) if set(names) & set(REDIS) else None
        hbm_unix = None
        if "ipc_pages" in names:  # DRAM for one block: what is put moves on into HBM
            os.mkdir(hbm_folder := os.path.join(folder, "hbm"))
            one = (max(sizes.values()) + (64 << 10)) / (1 << 30)
            hbm_unix = start_kvtier(stack, hbm_folder, dram_gb=one, hbm_gb=max(1.0, 4 * need / (1 << 30)))[1]
        setup = Setup(tcp, unix, hbm_unix, rport, args.device, stack, folder)
        for size_name, size in sizes.items():
            data = Payloads(args.batch, size)
            for n in counts:
                systems = {name: partial(SYSTEMS[name], setup, n, data) for name in names}
                cell = run_cell(systems, data, args.rounds, args.round_s)
                results.setdefault(size_name, {})[str(n)] = cell
                print(f"{size_name} x{args.batch}, {n} client(s): " + _line(cell), flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    report = {"batch_blocks": args.batch, "device": args.device, "systems": names, "results": results,
              "verdict": verdict(results),
              "machine": {"cpus": os.cpu_count(), "device": device, "torch": torch.__version__,
                          "torch_threads": 1, "copy_threads": parallel.THREADS,
                          "redis_parser": _redis_parser()}}
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def _line(cell: dict) -> str:
    return ", ".join(f"{k[:-5]} {v:.2f} GB/s" for k, v in cell.items() if k.endswith("_gbps"))


def _redis_parser() -> str:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return "python"
    return "hiredis"


def verdict(results: dict) -> dict:
    """Each ratio of two systems measured with 1 client, and for a target whether it was met."""
    out = {}
    for size_name, cells in results.items():
        one = cells.get("1")
        if one is None:
            continue
        out[size_name] = {}
        for system, limit in (r.split("/") for r in RATIOS):
            if f"{system}_gbps" not in one or f"{limit}_gbps" not in one:
                continue
            name = f"{system}_vs_{limit.removesuffix('_get')}"
            ratio = one[f"{system}_gbps"] / max(one[f"{limit}_gbps"], 1e-9)
            out[size_name][name] = round(ratio, 3)
            if name in TARGETS:
                out[size_name][f"{name}_met"] = ratio >= TARGETS[name]
    return out


# 1-client ratios, "system/its limit": the targets first, then how close each path comes to its own limit.
RATIOS = ("kvtier_get/redis_get", "unix_get/memcpy", "bare_tcp/redis_get", "kvtier_get/bare_tcp",
          "unix_get/bare_unix", "shm_get/redis_get", "shm_get_into/memcpy_threads", "shm_pages/memcpy",
          "socket_pages/memcpy", "shm_pages/pinned_h2d", "socket_pages/pinned_h2d", "ipc_pages/d2d",
          "pinned_h2d/d2d")
_COLUMNS = ("kvtier_get", "kvtier_get_into", "unix_get", "unix_get_into", "shm_get", "shm_get_into",
            "shm_pages", "socket_pages", "ipc_pages", "redis_get", "memcpy", "memcpy_threads", "pinned_h2d",
            "d2d", "bare_tcp", "bare_unix", "kvtier_put", "unix_put", "redis_put")
_LATENCIES = {"kvtier_get": "get", "shm_pages": "shm_pages"}  # system -> its p50/p99 column


def render(report: dict) -> str:
    """GB/s per system measured, then the p50/p99 latency of TCP get and of shm_pages, one row
    per block size and client count."""
    first = next(iter(next(iter(report["results"].values())).values()))
    columns = [c for c in _COLUMNS if f"{c}_gbps" in first]
    latencies = {s: label for s, label in _LATENCIES.items() if f"{s}_gbps" in first}
    head = (f"{'size':8} {'clients':>7} " + " ".join(f"{c:>15}" for c in columns)
            + "".join(f" {label + ' p50/p99 ms':>22}" for label in latencies.values()))
    lines = [head, "-" * len(head)]
    for size_name, cells in report["results"].items():
        for n, c in cells.items():
            gbps = " ".join(f"{c[col + '_gbps']:>15.2f}" for col in columns)
            ms = "".join(f" {c[s + '_p50_ms']:>14.1f}/{c[s + '_p99_ms']:<7.1f}" for s in latencies)
            lines.append(f"{size_name:8} {n:>7} {gbps}{ms}")
    lines.append(f"GB/s = 1e9 bytes per second; pages on {report['machine']['device']} "
                 f"(torch {report['machine']['torch']}); bare_tcp/bare_unix: the same bytes over a bare "
                 "socket between two processes (the ceiling for any socket protocol); 1-client ratios "
                 "and targets: " + json.dumps(report["verdict"]))
    return "\n".join(lines)
