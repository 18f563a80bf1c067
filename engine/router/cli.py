"""``kvtier router``: the OpenAI-compatible router in front of engine replicas."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("router", help="route OpenAI-compatible requests to engine replicas",
                       description="Consistent hashing with bounded loads over --replica URLs: the "
                       "turns of one conversation land on the replica whose cache is warm.")
    p.add_argument("--replica", action="append", required=True, metavar="URL",
                   help="an engine replica's base URL, e.g. http://127.0.0.1:8100 (repeat for more)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--epsilon", type=float, default=0.25,
                   help="load bound: no replica above ceil((1+ε)·mean) in-flight requests (default 0.25)")
    p.add_argument("--vnodes", type=int, default=160, help="virtual nodes per replica (default 160)")
    p.add_argument("--health-interval", type=float, default=2.0, help="seconds between health checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from engine.router.proxy import Router, RouterConfig, create_app

    config = RouterConfig(tuple(u.rstrip("/") for u in args.replica), args.epsilon, args.vnodes,
                          args.health_interval)
    app = create_app(Router(config))
    print(f"kvtier router on http://{args.host}:{args.port} -> {', '.join(config.replicas)}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0
