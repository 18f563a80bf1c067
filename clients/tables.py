"""Plain-text tables for ``kvtier admin`` (no dependency; columns sized to their contents)."""

from __future__ import annotations

import time


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def stats_table(stats: dict) -> str:
    rows = [[t["name"], human_bytes(t["used_bytes"]), human_bytes(t["capacity_bytes"]), t["blocks"],
             t["pinned_blocks"], t["hits"], t["misses"], t["evictions"], t["promotions"],
             t["demotions"]] for t in stats["tiers"]]
    head = ["tier", "used", "capacity", "blocks", "pinned", "hits", "misses", "evicted", "promoted",
            "demoted"]
    summary = (f"{stats['blocks']} blocks, hit rate {stats['hit_rate']:.1%} "
               f"({stats['hits']} hits / {stats['gets']} gets), policy {stats['policy']}")
    return table(head, rows) + "\n" + summary


def block_table(blocks: list[dict]) -> str:
    rows = [[b["key"], b["depth"], human_bytes(b["size"]), ",".join(b["tiers"]), b["pinned"] or "-",
             b["hits"], _clock(b["last_access"])] for b in blocks]
    return table(["key", "depth", "size", "tiers", "pinned", "hits", "last access"], rows)


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if seconds else "-"
