"""What the two halves of kvtier's vLLM connector share: settings, the block layout and
namespace, the per-step plan the scheduler hands the workers, and the counters.

The plan is plain data (lists of ints, bytes and strings) because vLLM pickles it from the
scheduler process to every worker. Workers compute their own keys from the plan's token
ids: a key names the tensor-parallel rank, and only the worker knows its rank.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
from vllm.logger import init_logger
from vllm.v1.kv_cache_interface import AttentionSpec, KVCacheConfig

from clients.url import service_url
from hashing.keys import BlockHasher, Namespace

# Under vLLM's own logger tree, so its handler and level apply to these lines.
log = init_logger("vllm.kvtier")

TESTED_VLLM = "0.34.0"
LOG_EVERY_REQUESTS = 100
_SETTINGS = {"url", "timeout_s", "salt", "model_id", "allow_untested_vllm"}


@dataclass(frozen=True)
class KvtierSettings:
    """``kv_connector_extra_config`` keys: ``url`` (else ``$KVTIER_URL``, else the port
    ``kvtier serve`` listens on; several, comma-separated: sharded), ``timeout_s`` for one
    call to the service, ``salt`` (this deployment apart from others on the same service),
    ``model_id`` (else vLLM's model name, revision and quantization), and
    ``allow_untested_vllm`` (start on another vLLM release with a warning)."""

    url: str
    timeout_s: float = 1.0
    salt: str = ""
    model_id: str = ""
    allow_untested_vllm: bool = False

    @classmethod
    def from_extra_config(cls, extra: dict[str, Any]) -> KvtierSettings:
        unknown = set(extra) - _SETTINGS
        if unknown:
            raise ValueError(f"kvtier connector: unknown kv_connector_extra_config keys {sorted(unknown)}; "
                             f"it takes {sorted(_SETTINGS)}")
        url = service_url(extra.get("url"))
        timeout_s = float(extra.get("timeout_s", 1.0))
        if timeout_s <= 0:
            raise ValueError(f"kvtier connector: timeout_s must be positive, got {timeout_s}")
        return cls(url, timeout_s, str(extra.get("salt", "")), str(extra.get("model_id", "")),
                   bool(extra.get("allow_untested_vllm", False)))


@dataclass(frozen=True)
class BlockLayout:
    """One block's payload: K and V of every layer, contiguous, in vLLM's logical order::

        payload: [layers, heads, block_size, content]   content = K ‖ V of one head, one token

    vLLM 0.34 views every attention layer's cache as ``[num_blocks, heads, block_size,
    content]`` (blocks at dim 0 for every backend; the physical layout, LBHNC, LHBNC,
    BLHNC, ..., only changes the strides), so a block is read and written by indexing dim 0
    and the payload does not depend on the physical layout. ``heads`` are this rank's KV
    heads (1 for MLA, whose content is the latent vector).
    """

    num_layers: int
    num_heads: int
    block_size: int
    content_bytes: int
    dtype: str
    quant: str

    @classmethod
    def of(cls, kv_cache_config: KVCacheConfig) -> BlockLayout:
        groups = kv_cache_config.kv_cache_groups
        spec = groups[0].kv_cache_spec if len(groups) == 1 else None
        if not isinstance(spec, AttentionSpec) or getattr(spec, "sliding_window", None) \
                or spec.tokens_per_state != 1:
            raise ValueError("kvtier connector: only models with one full-attention KV cache group are "
                             f"supported; this one has {[type(g.kv_cache_spec).__name__ for g in groups]}")
        return cls(len(groups[0].layer_names), spec.num_heads, spec.block_size,
                   spec.state_content_size_bytes, str(spec.dtype).removeprefix("torch."),
                   str(getattr(spec.kv_quant_mode, "name", spec.kv_quant_mode)))

    @property
    def block_bytes(self) -> int:
        return self.num_layers * self.num_heads * self.block_size * self.content_bytes

    def name(self, tp_rank: int, tp_size: int) -> str:
        return (f"vllm/LHNC/{self.dtype}/{self.quant}/L{self.num_layers}/H{self.num_heads}/N{self.block_size}"
                f"/C{self.content_bytes}B/tp{tp_rank}of{tp_size}")


def model_id(settings: KvtierSettings, model_config: Any) -> str:
    """The model's name in kvtier keys: the setting, else what vLLM loaded (quantized
    weights give other KV, so the quantization is part of it)."""
    if settings.model_id:
        return settings.model_id
    return f"{model_config.model}@{model_config.revision or ''}/{model_config.quantization or ''}"


def request_hasher(base: Namespace, block_size: int, cache_salt: str | None, adapter: str) -> BlockHasher:
    """The hasher of one request: the deployment's namespace plus the request's tenant
    (vLLM's ``cache_salt``) and LoRA adapter, so no tenant or adapter hits another's blocks."""
    salt = base.salt if not cache_salt else f"{len(base.salt)}:{base.salt}|{cache_salt}"
    namespace = Namespace(base.model_id, base.kv_layout, adapter or base.adapter_id, salt)
    return BlockHasher(namespace, block_size)


@dataclass
class BlockRun:
    """Blocks ``[first, end)`` of one request: their vLLM block ids, and the request's
    tokens from its start up to the end of block ``end - 1`` (the chain of keys needs them)."""

    req_id: str
    first: int
    block_ids: list[int]
    token_ids: list[int]
    cache_salt: str | None
    adapter: str

    @property
    def end(self) -> int:
        return self.first + len(self.block_ids)


@dataclass
class KvtierMetadata(KVConnectorMetadata):
    """One step's plan: runs to load into pages before the forward pass, and runs whose
    pages this step fills, to save after it."""

    loads: list[BlockRun] = field(default_factory=list)
    saves: list[BlockRun] = field(default_factory=list)


@dataclass
class SchedulerStats:
    lookups: int = 0  # calls to the service (one per request and step at most)
    looked_up_blocks: int = 0
    hit_blocks: int = 0  # leading blocks the service had
    matched_tokens: int = 0  # tokens vLLM was told it can load
    full_prompt_hits: int = 0  # hits cut short so that vLLM computes the last prompt token
    uncacheable_requests: int = 0  # multimodal or prompt-embedding requests: not looked up
    finished_requests: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class WorkerStats:
    runs: int = 0  # load and save runs handled (a line is logged every LOG_EVERY_REQUESTS)
    loaded_blocks: int = 0
    loaded_tokens: int = 0
    loaded_bytes: int = 0
    load_failures: int = 0  # blocks the service did not return whole (vLLM recomputes them)
    queued_blocks: int = 0  # blocks handed to the background saver

    def as_dict(self) -> dict:
        return asdict(self)
