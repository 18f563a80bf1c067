"""The tiered store a ``ServeConfig`` describes: HBM (if sized), DRAM, flash (if sized)."""

from __future__ import annotations

import os

from cacheserver.config import ServeConfig
from tiers.store import TieredStore


def build_store(config: ServeConfig) -> TieredStore:
    from tiers.flash import FlashTier
    from tiers.slab import dram_tier, hbm_tier

    page = config.page_kb << 10
    tiers = []
    if config.hbm_gb:
        tiers.append(hbm_tier(config.bytes_of(config.hbm_gb), page))
    if config.dram_gb:
        tiers.append(dram_tier(config.bytes_of(config.dram_gb), page))
    if config.flash_gb:
        tiers.append(FlashTier(os.path.abspath(config.flash_dir), config.bytes_of(config.flash_gb)))
    return TieredStore(tiers, policy=config.policy)
