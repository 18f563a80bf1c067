"""What the hits are worth: prefill compute avoided and time to first token saved.

A hit block is ``block_tokens`` tokens the engine does not prefill; it costs instead a
copy of ``block_bytes`` from the tier that held it. With the engine's prefill throughput
(tokens/s, ``kvtier bench engine``) and each tier's read bandwidth (bytes/s, ``kvtier bench
tiers``), the saving per request is compute not done minus bytes loaded. Loads and compute
are taken as serial (no overlap), so the estimate is conservative.
"""

from __future__ import annotations

from dataclasses import dataclass

# Read bandwidths (bytes/s) to use when none is measured: HBM-to-HBM copy, pinned host
# memory over PCIe 4 x16, NVMe flash. Override with --bandwidth NAME=BYTES_PER_S.
DEFAULT_BANDWIDTH = {"hbm": 1.0e12, "dram": 2.0e10, "flash": 2.0e9}
DEFAULT_PREFILL_TPS = 5000.0  # tokens/s of one replica; measure yours


@dataclass(frozen=True)
class Deployment:
    block_tokens: int
    block_bytes: int
    prefill_tps: float
    bandwidth: dict[str, float]  # tier name -> read bytes/s


def savings(result: dict, num_requests: int, d: Deployment) -> dict:
    """Savings of one replay ``result`` (from ``replay``) over ``num_requests`` requests."""
    requested_tokens = result["requested_blocks"] * d.block_tokens
    saved_tokens = result["hit_blocks"] * d.block_tokens
    load_s = 0.0
    for t in result["tiers"]:
        bw = d.bandwidth.get(t["name"])
        if bw is None:
            raise ValueError(f"no bandwidth for tier {t['name']!r}; pass --bandwidth {t['name']}=BYTES_PER_S")
        load_s += t["hits"] * d.block_bytes / bw
    compute_s = saved_tokens / d.prefill_tps
    baseline_s = requested_tokens / d.prefill_tps
    return {
        "prefill_tokens_avoided": saved_tokens,
        "prefill_compute_saved": saved_tokens / requested_tokens if requested_tokens else 0.0,
        "load_seconds": load_s,
        "ttft_saved_seconds_per_request": (compute_s - load_s) / num_requests if num_requests else 0.0,
        "ttft_reduction": (compute_s - load_s) / baseline_s if baseline_s else 0.0,
    }
