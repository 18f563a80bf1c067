"""Eviction policies by name: what ``--policy`` and ``TieredStore(policy=...)`` accept.

``default`` is ``mq``: among the cheap policies (no simulation, at most twice ``lru``'s
bytes per block and replay time) it hit most on the Mooncake trace and on the synthetic
workloads, and it has no setting tuned on any of them. ``adaptive`` simulates six shadow
caches to choose an order: an order of magnitude more memory and CPU, for gains that did
not hold on traffic it was not tuned on. docs/eviction.md has the figures. Adding a
policy is one entry here.
"""

from __future__ import annotations

from tiers.adaptive import AdaptivePolicy, BimodalPolicy, HotPolicy
from tiers.policy import EvictionPolicy, FIFOPolicy, LRUPolicy, MultiQueuePolicy, SLRUPolicy

POLICIES: dict[str, type[EvictionPolicy]] = {
    "lru": LRUPolicy,
    "fifo": FIFOPolicy,
    "slru": SLRUPolicy,
    "mq": MultiQueuePolicy,
    "bimodal": BimodalPolicy,
    "hot": HotPolicy,
    "adaptive": AdaptivePolicy,
}
DEFAULT_POLICY = "mq"


def make_policy(name: str) -> EvictionPolicy:
    """A new policy by name; ``"default"`` is ``DEFAULT_POLICY``."""
    key = DEFAULT_POLICY if name == "default" else name
    if key not in POLICIES:
        raise ValueError(f"eviction policy {name!r} is unknown; choose one of "
                         f"{['default', *POLICIES]}")
    return POLICIES[key]()
