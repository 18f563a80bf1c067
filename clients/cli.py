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
import os
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
# Libraries that log at INFO per request or per lifecycle step (httpx: every request;
# uvicorn: startup lines and one access line per request): WARNING unless --log-level debug.
QUIET_LIBRARIES = ("httpx", "httpcore", "uvicorn")


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


def configure_logging(level: str) -> None:
    """The process's one logging setup: kvtier's loggers at ``level`` on stderr, the
    libraries in ``QUIET_LIBRARIES`` at WARNING unless ``level`` is DEBUG. Servers run
    uvicorn with ``log_config=None`` so that it keeps this setup instead of its own."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if numeric <= logging.DEBUG else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level)
    except ValueError as e:
        print(f"kvtier: error: {e}", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (``kvtier admin ls | head``): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as e:  # bad settings and input: say what is wrong, no traceback
        print(f"kvtier {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
