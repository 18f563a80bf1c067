import pytest

from hashing.keys import BlockHasher, Namespace
from tiers.base import Block, make_block
from tiers.flash import FlashTier
from tiers.slab import dram_tier
from tiers.store import TieredStore

BLOCK = 1000  # payload bytes; one 1 KiB page each in the DRAM tier below
PAGE = 1024


def payload_for(key: bytes, size: int = BLOCK) -> bytes:
    """A payload derived from the key, so any mix-up between blocks is visible."""
    return (key * (size // len(key) + 1))[:size]


def chain(name: str, n: int, block_size: int = 4) -> list[Block]:
    """``n`` chained blocks of a prompt named ``name``."""
    hasher = BlockHasher(Namespace(salt=name), block_size)
    keys = hasher.keys(list(range(n * block_size)))
    parents = [hasher.root, *keys[:-1]]
    return [make_block(k, p, i, payload_for(k)) for i, (k, p) in enumerate(zip(keys, parents, strict=True))]


def one(name: str) -> Block:
    return chain(name, 1)[0]


@pytest.fixture
def make_store(tmp_path):
    """A store with a DRAM tier of ``dram`` blocks and, if ``flash`` blocks > 0, a flash tier,
    evicting by ``policy`` (each test names the one it relies on)."""
    stores = []

    def build(*, policy: str, dram: int = 3, flash: int = 0, folder: str = "flash", **kwargs) -> TieredStore:
        tiers = [dram_tier(dram * PAGE, PAGE)]
        if flash:
            tiers.append(FlashTier(str(tmp_path / folder), flash * 4096 + flash * 64,
                                   map_size=kwargs.pop("map_size", None),
                                   max_map_size=kwargs.pop("max_map_size", None)))
        store = TieredStore(tiers, policy=policy, **kwargs)
        stores.append(store)
        return store

    yield build
    for s in stores:
        s.close(persist=False)
