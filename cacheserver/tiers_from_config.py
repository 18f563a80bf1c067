"""The tiered store a ``ServeConfig`` describes: DRAM, HBM (if sized), flash (if sized),
and the remote tier below them (if ``remote`` names one).

A flash tier that cannot be opened (folder not creatable, LMDB refuses it) does not stop
the service: it starts without flash, logs why, and ``Built.flash_problem`` says so (the
REST API reports it in ``/v1/stats``). In durable mode (``flash_sync``) every put is written
through to flash, and LMDB syncs each commit, before the put is acknowledged; a put that
cannot reach flash (broken, or never opened) is refused instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import lmdb

from cacheserver.config import ServeConfig
from tiers.base import Tier
from tiers.store import TieredStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Built:
    store: TieredStore
    flash_problem: str = ""  # why the configured flash tier is missing; empty when it is there


def build_store(config: ServeConfig) -> Built:
    from tiers import cuda_ipc, sharedmem
    from tiers.slab import dram_tier, hbm_tier

    page = config.page_kb << 10
    tiers: list[Tier] = []
    # DRAM above HBM. An engine elsewhere reads a DRAM hit over the socket from host memory
    # and an HBM hit after a GPU-to-host copy: slower. An engine on this host reads a DRAM
    # hit out of shared memory (on a GPU, by DMA) and an HBM hit GPU to GPU by CUDA IPC when
    # it runs on the same GPU: faster. So new and promoted blocks go to DRAM, HBM holds what
    # DRAM evicts (above flash), and DRAM holds just what it would without an HBM tier: an
    # HBM tier never makes a hit slower than it would be without one.
    shared = config.shared_memory and bool(config.unix_socket) and sharedmem.supported()
    if config.dram_gb:  # page-locked only beside an HBM tier, the one GPU it copies to and from
        pinned = bool(config.hbm_gb)
        tiers.append(dram_tier(config.bytes_of(config.dram_gb), page, shared=shared, pinned=pinned))
    if config.hbm_gb:
        ipc = shared and cuda_ipc.available()
        if shared and not ipc:
            log.warning("kvtier serve: CuPy is missing, so engines on this GPU get HBM hits over the "
                        "socket, not by CUDA IPC (pip install 'kvtier[gpu]')")
        tiers.append(hbm_tier(config.bytes_of(config.hbm_gb), page, shared=ipc))
    problem = ""
    if config.flash_gb:
        flash, problem = open_flash(config)
        tiers += [flash] if flash is not None else []
    if not tiers:
        raise ValueError(f"no tier could be opened: {problem}; fix the flash folder or give --dram-gb a size")
    # Durable mode stays on without flash: the store then refuses every put (NOT_DURABLE)
    # rather than acknowledge one that a crash would lose.
    remote = None
    if config.remote:
        from tiers.remote import RemoteTier

        remote = RemoteTier(config.remote_settings())  # connects on first use: it may be down now
    store = TieredStore(tiers, policy=config.policy, write_through=config.flash_sync, remote=remote)
    return Built(store, problem)


def open_flash(config: ServeConfig) -> tuple[Tier | None, str]:
    """The flash tier, or ``None`` and the reason it could not be opened."""
    from tiers.flash import FlashTier

    path = os.path.abspath(config.flash_dir)
    try:
        return FlashTier(path, config.bytes_of(config.flash_gb), sync=config.flash_sync), ""
    except (OSError, lmdb.Error) as e:
        problem = f"flash tier at {path} could not be opened ({e}); serving from DRAM only, nothing persists"
        log.error("kvtier serve: %s", problem)
        return None, problem
