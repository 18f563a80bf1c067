"""The flash tier's state as an operator reads it in ``/v1/stats``: whether blocks still
reach flash, and if not, why.

- ``none``: no flash tier was configured (nothing persists; that was asked for).
- ``unavailable``: one was configured but could not be opened; the service runs on DRAM.
- ``degraded``: it is open but its last write failed (disk full, I/O error, file limits);
  the service keeps serving from DRAM and blocks evicted meanwhile are dropped.
- ``ok``: writes reach it.
"""

from __future__ import annotations


def flash_status(tiers: list[dict], configured: bool, open_problem: str) -> dict:
    """``tiers`` are the store's per-tier stats (``TieredStore.stats()["tiers"]``)."""
    if not configured:
        return {"state": "none", "reason": "no flash tier configured (--flash-gb 0)"}
    if open_problem:
        return {"state": "unavailable", "reason": open_problem}
    flash = next(t for t in tiers if t["name"] == "flash")
    if flash["write_problem"]:
        return {"state": "degraded", "reason": flash["write_problem"], "write_errors": flash["write_errors"]}
    return {"state": "ok", "reason": "", "write_errors": flash["write_errors"]}
