"""The hit-rate benchmark's figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_hit_rates(report: dict, path: Path) -> None:
    """Hit rate against capacity, one line per policy, with Belady's and the unlimited bound
    and LRU with perfect admission."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in dict.fromkeys(r["policy"] for r in report["results"]):
        rows = sorted((r["capacity_fraction"], r["hit_rate"])
                      for r in report["results"] if r["policy"] == policy)
        ax.plot([x for x, _ in rows], [100 * y for _, y in rows], marker="o", label=policy)
    bel = sorted((b["capacity_fraction"], b["hit_rate"]) for b in report["belady"])
    ax.plot([x for x, _ in bel], [100 * y for _, y in bel], "k--", marker="x", label="Belady (offline)")
    admit = sorted((b["capacity_fraction"], b["hit_rate"]) for b in report["oracle_admission"])
    ax.plot([x for x, _ in admit], [100 * y for _, y in admit], color="grey", linestyle="-.", marker="+",
            label="LRU + perfect admission (offline)")
    ax.axhline(100 * report["unlimited_hit_rate"], color="grey", linestyle=":", label="unlimited cache")
    ax.set_xscale("log")
    ax.set_xlabel("capacity (fraction of the trace's distinct blocks)")
    ax.set_ylabel("hit rate (% of requested full blocks)")
    ax.set_title(f"prefix-cache hit rate: {report['trace']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tiers(report: dict, path: Path) -> None:
    """Hits by tier for each policy and capacity (stacked bars)."""
    plt = _pyplot()
    rows = report["results"]
    names = [t["name"] for t in rows[0]["tiers"]]
    labels = [f"{r['policy']}\n{r['capacity_fraction']:.3g}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows)), 4.5))
    bottom = [0.0] * len(rows)
    for i, name in enumerate(names):
        share = [100 * r["tiers"][i]["hits"] / r["requested_blocks"] for r in rows]
        ax.bar(range(len(rows)), share, bottom=bottom, label=name)
        bottom = [b + s for b, s in zip(bottom, share, strict=True)]
    ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=90)
    ax.set_ylabel("hits (% of requested full blocks)")
    ax.set_title("hits by tier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
