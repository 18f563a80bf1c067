"""``kvtier bench NAME``: the benchmarks, one module each.

A benchmark module defines ``add_arguments(parser)`` and ``run(args) -> int`` and keeps its
heavy imports inside ``run``. Benchmarks are not tests: they compare side by side in one
run, print a table, and write JSON (and plots) for the README.
"""

from __future__ import annotations

import argparse
import importlib

# benchmark -> module; a new benchmark is one module and one line here.
BENCHMARKS = {
    "tiers": "benchmarks.tiers",
    "dataplane": "benchmarks.dataplane",
    "engine": "benchmarks.engine",
    "hitrate": "benchmarks.hitrate",
    "ttft": "benchmarks.ttft",
    "router": "benchmarks.router",
    "soak": "benchmarks.soak",
    "remote": "benchmarks.remote_bench",
    "plugins": "benchmarks.plugins",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="run a benchmark", description=__doc__.splitlines()[0].replace("``", ""))
    benches = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        mod = importlib.import_module(module)
        summary = (mod.__doc__ or "").strip().splitlines()[0].replace("``", "")
        bp = benches.add_parser(name, help=summary, description=summary)
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
