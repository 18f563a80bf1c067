"""``kvtier admin``: inspect and manage a running cache service over its REST API.

Tables for people by default, ``--json`` for scripts. The admin token comes from
``--token`` or ``KVTIER_ADMIN_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="inspect and manage a running cache service",
                       description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--url", default=os.environ.get("KVTIER_ADMIN_URL", "http://127.0.0.1:8300"),
                   help="REST address of the service (default http://127.0.0.1:8300)")
    p.add_argument("--token", default=None, help="admin token (default: $KVTIER_ADMIN_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--timeout", type=float, default=10.0)
    cmds = p.add_subparsers(dest="admin_command", metavar="ACTION", required=True)
    cmds.add_parser("stats", help="per-tier usage and counters")
    ls = cmds.add_parser("ls", help="list blocks")
    ls.add_argument("--tier")
    ls.add_argument("--pinned", choices=("yes", "no"))
    ls.add_argument("--offset", type=int, default=0)
    ls.add_argument("--limit", type=int, default=50)
    cmds.add_parser("show", help="one block's metadata").add_argument("key")
    cmds.add_parser("rm", help="delete one block").add_argument("key")
    for name in ("pin", "unpin"):
        c = cmds.add_parser(name, help=f"{name} blocks by key")
        c.add_argument("keys", nargs="+")
        if name == "pin":
            c.add_argument("--tier", help="tier to pin in (default: the top tier)")
            c.add_argument("--ttl", type=float, help="seconds until the pin lapses")
    fl = cmds.add_parser("flush", help="drop every block, one tier's, or one namespace's")
    scope = fl.add_mutually_exclusive_group()
    scope.add_argument("--tier")
    scope.add_argument("--root", help="namespace root key (hex)")
    fl.add_argument("--include-pinned", action="store_true")
    p.set_defaults(func=run)


def _ls_params(args: argparse.Namespace) -> dict:
    params = {"offset": args.offset, "limit": args.limit}
    if args.tier:
        params["tier"] = args.tier
    if args.pinned:
        params["pinned"] = args.pinned == "yes"
    return {"params": params}


def _flush_body(args: argparse.Namespace) -> dict:
    body = {"include_pinned": args.include_pinned, "tier": args.tier, "root": args.root}
    return {"json": {k: v for k, v in body.items() if v is not None}}


# action -> (method, path, options for httpx); a new action is one line here.
_ACTIONS = {
    "stats": lambda a: ("GET", "/v1/stats", {}),
    "ls": lambda a: ("GET", "/v1/blocks", _ls_params(a)),
    "show": lambda a: ("GET", f"/v1/blocks/{a.key}", {}),
    "rm": lambda a: ("DELETE", f"/v1/blocks/{a.key}", {}),
    "pin": lambda a: ("POST", "/v1/pin", {"json": {"keys": a.keys, "tier": a.tier, "ttl": a.ttl}}),
    "unpin": lambda a: ("POST", "/v1/unpin", {"json": {"keys": a.keys}}),
    "flush": lambda a: ("POST", "/v1/flush", _flush_body(a)),
}


def run(args: argparse.Namespace) -> int:
    import httpx

    method, path, options = _ACTIONS[args.admin_command](args)
    token = args.token or os.environ.get("KVTIER_ADMIN_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, args.url.rstrip("/") + path, headers=headers, timeout=args.timeout,
                          **options)
    except httpx.HTTPError as e:
        print(f"kvtier admin: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    is_json = r.headers.get("content-type", "").startswith("application/json")
    data = r.json() if is_json else {"detail": r.text}
    if r.status_code >= 400:
        print(f"kvtier admin: {r.status_code}: {data.get('detail', data)}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else render(args.admin_command, data))
    return 0


def render(action: str, data: dict) -> str:
    from clients.tables import block_table, stats_table

    if action == "stats":
        return stats_table(data)
    if action == "ls":
        return block_table(data["blocks"]) + f"\n({len(data['blocks'])} shown of {data['total']})"
    if action == "show":
        return "\n".join(f"{k:12} {v}" for k, v in data.items())
    return "  ".join(f"{k}: {v}" for k, v in data.items())
