"""The ``kvtier`` command line: one entry point, one subcommand per module.

Each subcommand lives beside the code it drives, in a module that defines
``add_parser(subparsers)``: the parser it adds sets ``func`` to the function that runs it.
Those modules import only the standard library at the top, so ``kvtier --help`` is fast;
heavy imports (torch, the engine) happen inside the command.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module defining it; a new command is one module and one line here.
COMMANDS = {
    "keys": "hashing.cli",
    "bench": "benchmarks.cli",
    "generate": "engine.cli",
    "serve": "cacheserver.cli",
    "admin": "clients.admin_cli",
    "engine": "engine.server.cli",
    "router": "engine.router.cli",
    "up": "engine.stack.cli",
    "chat": "clients.chat_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvtier",
        description="kvtier: a tiered KV/prefix cache for LLM serving (HBM, DRAM, flash).",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except ValueError as e:  # bad settings and input: say what is wrong, no traceback
        print(f"kvtier {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
