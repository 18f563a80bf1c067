"""Pages <-> bytes in the cache service's layout [layers, 2, block_size, kv_heads, head_dim], which is
also the pool's own: one page is one contiguous run of the block-major pool."""

import pytest
import torch

from engine.model.kv_cache import KVCache, PageLayout


def layout(dtype=torch.float32) -> PageLayout:
    return PageLayout(num_layers=2, block_size=4, num_kv_heads=2, head_dim=8, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_page_bytes_round_trip(dtype):
    cache = KVCache(layout(dtype), num_blocks=5)
    cache.kv.copy_(torch.randn(cache.kv.shape))
    payload = bytes(cache.page(3).numpy())
    assert len(payload) == layout(dtype).nbytes == 2 * 2 * 4 * 2 * 8 * cache.kv.element_size()
    other = KVCache(layout(dtype), num_blocks=5)
    other.write_page(1, payload)
    assert torch.equal(other.kv[1], cache.kv[3])
    assert bytes(other.page(1).numpy()) == payload
    assert not other.kv[[0, 2, 3, 4, 5]].any()  # 5: the scratch page


def test_page_layout_is_layer_kv_token_head_dim():
    cache = KVCache(layout(), num_blocks=3)
    cache.kv.copy_(torch.arange(cache.kv.numel(), dtype=torch.float32).view(cache.kv.shape))
    page = torch.frombuffer(bytearray(cache.page(2).numpy()), dtype=torch.float32).view(2, 2, 4, 2, 8)
    k_layer1 = cache.layer(1)[0][2]  # [block_size, heads, dim]
    assert torch.equal(page[1, 0], k_layer1)
    assert torch.equal(page[0, 1, 3], cache.kv[2, 0, 1, 3])
    assert cache.kv[2].is_contiguous() and cache.kv.shape[0] == 4  # 3 pages and the scratch page


def test_wrong_payload_size_is_refused():
    cache = KVCache(layout(), num_blocks=3)
    with pytest.raises(ValueError, match="payload has 1024 bytes"):
        cache.write_page(0, b"\0" * 10)


def test_layout_name_goes_into_block_keys():
    assert PageLayout(30, 16, 3, 64, torch.bfloat16).name == "bfloat16/L30/H3/D64"
