"""``kvtier chat``: a terminal chat with the stack, streaming each reply as it is written.

After each reply it shows how many prompt tokens the cache served: from the second turn
on, the whole history before the new message should be cached.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with the stack in the terminal",
                       description="A terminal chat client: type a message, Enter sends it; /reset starts "
                       "a new conversation; Ctrl-D or /quit ends.")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="router or engine URL (default :8000)")
    p.add_argument("--system", default="You are a helpful assistant.", help="system prompt")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    p.add_argument("--salt", help="cache_salt: your tenant id (isolates your cache)")
    p.set_defaults(func=run)


def stream_reply(client, url: str, body: dict, out) -> tuple[str, dict]:
    """Send one chat request, write the reply to ``out`` as it streams; (text, usage)."""
    text, usage = [], {}
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise RuntimeError(f"the server answered {response.status_code}: {message}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content") or ""
                text.append(piece)
                out.write(piece)
                out.flush()
    return "".join(text), usage


def run(args: argparse.Namespace) -> int:
    import httpx

    url = args.url.rstrip("/")
    messages = [{"role": "system", "content": args.system}]
    print(f"kvtier chat with {url} (/reset: new conversation, Ctrl-D: quit)")
    with httpx.Client(timeout=httpx.Timeout(600, connect=5)) as client:
        while True:
            try:
                line = input("\nyou> ").strip()
            except EOFError:
                print()
                return 0
            if line in ("/quit", "/exit"):
                return 0
            if line == "/reset":
                messages = messages[:1]
                print("(new conversation)")
                continue
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            body = {"messages": messages, "max_tokens": args.max_tokens, "temperature": args.temperature,
                    "stream": True, "stream_options": {"include_usage": True}}
            if args.salt:
                body["cache_salt"] = args.salt
            print("bot> ", end="", flush=True)
            try:
                reply, usage = stream_reply(client, url, body, sys.stdout)
            except (httpx.HTTPError, RuntimeError) as e:
                print(f"\n(error: {e})")
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": reply})
            cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
            print(f"\n  [{usage.get('prompt_tokens', '?')} prompt tokens, {cached} cached, "
                  f"{usage.get('completion_tokens', '?')} generated]")
