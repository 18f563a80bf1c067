"""``kvtier keys``: print the block keys of a token list, one hex key per full block."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keys",
        help="print the block keys of a token list",
        description="Print one hex key per full block of the tokens, one per line, so the "
        "blocks of a given prompt can be found in the cache's admin listing.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="comma-separated token ids, e.g. 1,2,3")
    src.add_argument("--text", help="text to tokenise with the default model's tokenizer")
    src.add_argument("--system-prompt", metavar="TEXT",
                     help="a system prompt, rendered with the default model's chat template as a chat "
                     "opening with it (what `kvtier engine --pin-system-prompt` pins)")
    p.add_argument("--block-size", type=int, default=16, help="tokens per block (default 16)")
    p.add_argument("--salt", default="", help="tenant salt (the request's cache_salt)")
    p.add_argument("--model-id", default="", help="model fingerprint the engine reports")
    p.add_argument("--kv-layout", default="", help="KV layout string the engine reports")
    p.add_argument("--adapter-id", default="", help="LoRA/adapter id")
    p.add_argument("--hash", default="xxh3_128", choices=("xxh3_128", "sha256"))
    p.add_argument("--secret-file", help="file holding the deployment's secret hash seed")
    p.set_defaults(func=run)


def parse_token_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--tokens must be comma-separated integers, got {text[:60]!r}") from None


def run(args: argparse.Namespace) -> int:
    from hashing.keys import BlockHasher, Namespace, read_secret

    namespace = Namespace(args.model_id, args.kv_layout, args.adapter_id, args.salt)
    if args.text is not None or args.system_prompt is not None:
        from engine.model.loader import default_tokenizer_for_keys

        system = args.system_prompt is not None
        tokens, model_id, kv_layout = default_tokenizer_for_keys(args.system_prompt if system else args.text,
                                                                 as_system_prompt=system)
        namespace = Namespace(args.model_id or model_id, args.kv_layout or kv_layout,
                              args.adapter_id, args.salt)
    else:
        tokens = parse_token_list(args.tokens)
    hasher = BlockHasher(namespace, args.block_size, args.hash, read_secret(args.secret_file))
    keys = hasher.keys(tokens)
    if not keys:
        print(f"no full block: {len(tokens)} tokens < block size {args.block_size}", file=sys.stderr)
    for key in keys:
        print(key.hex())
    return 0
