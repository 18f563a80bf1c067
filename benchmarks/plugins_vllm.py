"""``kvtier bench plugins``, vLLM's side: the worker half of ``KvtierConnector`` over KV
tensors from vLLM's own ``allocate_kv_cache`` on the CPU, driven as vLLM's model runner
drives it (bind the step's plan, ``start_load_kv`` or ``wait_for_save``, clear), beside
raw ``CacheClient`` calls on host buffers of the same bytes.

::

    kv[layer]: [2B, heads, block_size, K+V]     blocks [0, B): saved   [B, 2B): loaded into
    raw:       source [B, block_bytes] (the saved blocks' payloads)  ──put──►  ──get_into──► target

The plugin's save gathers every layer's slice of the blocks into a snapshot, hands it to
its background saver and is timed until the saver has put it all (``flush``); its load
``get_into``s a host staging buffer and scatters it into each layer. Raw puts the payloads
from one host buffer and ``get_into``s another: no gather, no scatter, no keys to hash.
No scheduler runs: the plan (``KvtierMetadata``) is written here as the scheduler would.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clients.cache_client import CacheClient
from clients.guard import ClientOptions


@dataclass(frozen=True)
class BlockShape:
    """One vLLM block; the default is Llama-3-8B's: 16 tokens x 32 layers x 8 heads x K,V
    x 128 x bf16 = 2 MiB."""

    block_size: int = 16
    layers: int = 32
    heads: int = 8
    head_size: int = 128
    dtype: torch.dtype = torch.bfloat16

    @property
    def nbytes(self) -> int:
        return self.layers * self.heads * self.block_size * 2 * self.head_size * self.dtype.itemsize

    @property
    def layer_names(self) -> list[str]:
        return [f"model.layers.{i}.self_attn.attn" for i in range(self.layers)]


def tiny_llama(folder: Path, shape: BlockShape, max_len: int) -> str:
    """A Llama's config.json in ``folder``, with ``shape``'s layers and heads: all vLLM reads
    of a model here (no weights, no tokenizer). Returns the folder, for ``ModelConfig``."""
    hidden = shape.heads * shape.head_size
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads, "num_hidden_layers": shape.layers, "vocab_size": 256,
        "max_position_embeddings": max_len, "rms_norm_eps": 1e-5,
        "torch_dtype": str(shape.dtype).removeprefix("torch.")}))
    return str(folder)


def vllm_config(model_dir: str, url: str, shape: BlockShape, max_len: int, *, max_num_seqs: int = 1,
                policy: str = "recompute", extra: dict | None = None):
    """vLLM's config for a replica, with ``KvtierConnector`` loaded by module path, as ``vllm
    serve --kv-transfer-config`` does (``extra``: the connector's settings beside ``url``)."""
    from vllm.config import (
        CacheConfig,
        DeviceConfig,
        KVTransferConfig,
        ModelConfig,
        SchedulerConfig,
        VllmConfig,
    )

    transfer = KVTransferConfig(
        kv_connector="KvtierConnector", kv_connector_module_path="clients.vllm_connector", kv_role="kv_both",
        kv_load_failure_policy=policy, kv_connector_extra_config={"url": url, **(extra or {})})
    return VllmConfig(
        model_config=ModelConfig(model=model_dir, skip_tokenizer_init=True,
                                 dtype=str(shape.dtype).removeprefix("torch."), max_model_len=max_len),
        scheduler_config=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_len,
                                         max_model_len=max_len, is_encoder_decoder=False),
        cache_config=CacheConfig(block_size=shape.block_size, enable_prefix_caching=True),
        device_config=DeviceConfig("cpu"), kv_transfer_config=transfer)


def kv_cache_config(shape: BlockShape, num_blocks: int, layout):
    """One KV tensor for every layer, laid out as ``layout`` (a ``KVCacheLayout``) says:
    LBHNC, each layer one region of ``num_blocks`` pages; BLHNC, each block every layer's page."""
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec, KVCacheTensor
    from vllm.v1.kv_cache_layout import KVCacheLayout

    spec = FullAttentionSpec(block_size=shape.block_size, num_kv_heads=shape.heads, head_size=shape.head_size,
                             dtype=shape.dtype)
    page = spec.page_size_bytes
    layer_stride, block_stride = {KVCacheLayout.LBHNC: (page * num_blocks, page),
                                  KVCacheLayout.BLHNC: (page, page * shape.layers)}[layout]
    tensor = KVCacheTensor(size=page * num_blocks * shape.layers, layers=shape.layer_names,
                           layer_stride=layer_stride, block_stride=block_stride)
    return KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[tensor], kv_cache_layout=layout.name,
                         kv_cache_groups=[KVCacheGroupSpec(shape.layer_names, spec)])


def make_worker(folder: Path, url: str, shape: BlockShape, num_blocks: int, timeout_s: float):
    """The worker-side connector and its KV tensors (``{layer: [num_blocks, heads,
    block_size, K+V]}``), built as in a vLLM worker: config, ``allocate_kv_cache``, register."""
    from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole
    from vllm.v1.kv_cache_layout import KVCacheLayout
    from vllm.v1.worker.utils import allocate_kv_cache

    from clients.vllm_connector import KvtierConnector

    max_len = num_blocks * shape.block_size
    model = tiny_llama(folder, shape, max_len)
    config = vllm_config(model, url, shape, max_len, extra={"timeout_s": timeout_s})
    config.cache_config.num_gpu_blocks = num_blocks
    kv_config = kv_cache_config(shape, num_blocks, KVCacheLayout.LBHNC)
    worker = KvtierConnector(config, KVConnectorRole.WORKER, kv_config)
    kv_caches = allocate_kv_cache(kv_config, torch.device("cpu"), KVCacheLayout.LBHNC)
    worker.register_kv_caches(kv_caches)
    return worker, [kv_caches[name] for name in shape.layer_names]


class VLLMPath:
    """One transport's contestants for a turn; ``prepare``, the four moves, ``check``."""

    engine = "vllm"

    def __init__(self, folder: Path, url: str, shape: BlockShape, blocks: int, timeout_s: float):
        self.shape, self.blocks, self.nbytes = shape, blocks, blocks * shape.nbytes
        self.connector, self.kv = make_worker(folder, url, shape, 2 * blocks, timeout_s)
        for kv in self.kv:
            kv[:blocks] = torch.randn(kv[:blocks].shape).to(shape.dtype)
        self.raw = CacheClient(url, ClientOptions(timeout=timeout_s))
        # source, target: [B, block_bytes]; the source holds the saved blocks' payloads
        self.source = self._pages(range(blocks)).view(torch.uint8).reshape(blocks, -1).numpy().copy()
        self.target = np.empty_like(self.source)
        self.copy_target = np.empty_like(self.source)
        self.token_ids: list[int] = []
        self.raw_keys: list[bytes] = []

    def _pages(self, block_ids) -> torch.Tensor:
        """[blocks, layers, heads, block_size, K+V]: what the blocks hold (a copy)."""
        ids = list(block_ids)
        return torch.stack([kv[ids] for kv in self.kv], dim=1)

    def _run(self, block_ids: range):
        from clients.vllm_connector_meta import BlockRun

        return BlockRun("bench", 0, list(block_ids), self.token_ids, None, "")

    def _step(self, meta) -> None:
        self.connector.bind_connector_metadata(meta)
        if meta.loads:
            self.connector.start_load_kv(None)
        else:
            self.connector.wait_for_save()
        self.connector.clear_connector_metadata()

    def prepare(self, turn: int) -> None:
        """Fresh tokens and keys (each put really stores); zeroed targets (each load lands)."""
        rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
        self.token_ids = rng.integers(0, 256, self.blocks * self.shape.block_size).tolist()
        self.raw_keys = [os.urandom(16) for _ in range(self.blocks)]
        for kv in self.kv:
            kv[self.blocks :] = 0
        self.target.fill(0)
        self.copy_target.fill(0)

    def plugin_save(self) -> None:
        from clients.vllm_connector_meta import KvtierMetadata

        self._step(KvtierMetadata(saves=[self._run(range(self.blocks))]))
        assert self.connector.worker.flush(), "the saver did not finish"

    def plugin_load(self) -> None:
        from clients.vllm_connector_meta import KvtierMetadata

        self._step(KvtierMetadata(loads=[self._run(range(self.blocks, 2 * self.blocks))]))
        failed = self.connector.get_block_ids_with_load_errors()
        assert not failed, f"{len(failed)} blocks not loaded"

    def raw_save(self) -> None:
        root = b"\0" * 16
        entries = [(k, self.raw_keys[i - 1] if i else root, i, memoryview(row))
                   for i, (k, row) in enumerate(zip(self.raw_keys, self.source, strict=True))]
        assert self.raw.put(entries) == len(entries)

    def raw_load(self) -> None:
        sizes = self.raw.get_into(self.raw_keys, [memoryview(row) for row in self.target])
        assert sizes == [self.shape.nbytes] * self.blocks, sizes

    def memcpy(self) -> None:
        np.copyto(self.copy_target, self.source)

    def check(self) -> None:
        """Every target holds the sources' bytes; the turn's entries are deleted."""
        loaded, saved = self._pages(range(self.blocks, 2 * self.blocks)), self._pages(range(self.blocks))
        assert torch.equal(loaded, saved), "plugin load: wrong bytes"
        assert np.array_equal(self.target, self.source), "raw load: wrong bytes"
        assert np.array_equal(self.copy_target, self.source), "memcpy: wrong bytes"
        worker = self.connector.worker
        plugin_keys = worker.hasher_of(self._run(range(self.blocks))).keys(self.token_ids)
        assert self.raw.delete(plugin_keys + self.raw_keys) == 2 * self.blocks

    def counters(self) -> dict:
        worker, raw = self.connector.worker, self.raw.counters
        saves = worker.saver.stats
        return {"plugin_failures": worker.client.counters.failures + worker.stats.load_failures
                + saves.save_failed + saves.save_dropped,
                "plugin_mapped_bytes": worker.client.counters.mapped_bytes,
                "raw_failures": raw.failures, "raw_mapped_bytes": raw.mapped_bytes}

    def close(self) -> None:
        self.connector.shutdown()
        self.raw.close()
