"""``KvtierConnector``: kvtier as vLLM's external KV cache (a v1 KV connector), tested with
vLLM 0.34.0 on the CPU. vLLM loads it by module path::

    vllm serve MODEL --kv-transfer-config '{"kv_connector": "KvtierConnector",
        "kv_connector_module_path": "clients.vllm_connector", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"url": "unix:///run/kvtier.sock"}}'

vLLM builds one instance in the scheduler process (role ``SCHEDULER``) and one in every
worker (role ``WORKER``); each delegates to its half, ``SchedulerSide`` or ``WorkerSide``,
and the scheduler's per-step plan (``KvtierMetadata``) reaches the workers through vLLM.
Settings are ``KvtierSettings``; the counters are ``connector.stats`` (the half's) and
``connector.client.counters``, logged through vLLM's logger at INFO every
``LOG_EVERY_REQUESTS`` requests (scheduler) or runs (worker) and at shutdown.

Keys are kvtier's own (``hashing.keys``), computed from token ids, so every replica and
host agrees on them whatever vLLM's hash settings; the namespace names the model, the
block layout and the tensor-parallel rank, plus the ``salt`` setting, vLLM's per-request
``cache_salt`` and the LoRA adapter. Replicas of the same model, layout and rank share
blocks; tenants with different salts never do.

Refused at start (``ValueError`` saying what to change), because they would fail
requests or serve wrong KV: another vLLM release than the tested one (unless
``allow_untested_vllm``), ``kv_load_failure_policy`` other than ``recompute`` (a block
evicted between lookup and load must be recomputed, not fail the request), pipeline or
context parallelism, and models with more than one KV cache group (hybrid, sliding
window). Multimodal and prompt-embedding requests are served without the cache.
"""

from __future__ import annotations

from typing import Any

import vllm
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole

from clients.guard import ClientOptions
from clients.sharded import open_client
from clients.vllm_connector_meta import (
    TESTED_VLLM,
    BlockLayout,
    BlockRun,
    KvtierMetadata,
    KvtierSettings,
    log,
    model_id,
    request_hasher,
)
from clients.vllm_connector_scheduler import SchedulerSide
from clients.vllm_connector_worker import WorkerSide
from hashing.keys import Namespace


class KvtierConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any):
        super().__init__(vllm_config, role, kv_cache_config)
        transfer = self._kv_transfer_config
        settings = KvtierSettings.from_extra_config(transfer.kv_connector_extra_config)
        _check_version(settings)
        if transfer.kv_load_failure_policy != "recompute":
            raise ValueError('kvtier connector: set "kv_load_failure_policy": "recompute" in '
                             "--kv-transfer-config, so a block the service lost between lookup and load "
                             "is recomputed instead of failing the request")
        tp_size = _check_parallelism(vllm_config.parallel_config)
        layout = BlockLayout.of(kv_cache_config)
        if layout.block_size != vllm_config.cache_config.block_size:
            raise ValueError(f"kvtier connector: the KV cache group's block size {layout.block_size} is not "
                             f"--block-size {vllm_config.cache_config.block_size}")
        self.client = open_client(settings.url, ClientOptions(timeout=settings.timeout_s))
        model = model_id(settings, vllm_config.model_config)
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            # Rank 0's keys stand for every rank's: ranks save the same blocks in the same step.
            namespace = Namespace(model, layout.name(0, tp_size), "", settings.salt)
            self.scheduler = SchedulerSide(self.client, namespace, layout.block_size)
        else:
            namespace = Namespace(model, layout.name(_tp_rank(tp_size), tp_size), "", settings.salt)

            def hasher_of(run: BlockRun):
                return request_hasher(namespace, layout.block_size, run.cache_salt, run.adapter)

            self.worker = WorkerSide(self.client, settings.url, layout, hasher_of)
        log.info("kvtier connector (%s): service %s, namespace %s", role.name.lower(), settings.url,
                 namespace)

    @property
    def stats(self):
        """This half's counters (``SchedulerStats`` or ``WorkerStats``)."""
        return self.scheduler.stats if self.scheduler is not None else self.worker.stats

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a best-effort cache: a dropped save is a later miss, never a wrong answer

    # -- scheduler side -----------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        return self.scheduler.num_new_matched_tokens(request, num_computed_tokens), False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        self.scheduler.update_state_after_alloc(request, num_external_tokens)

    def build_connector_meta(self, scheduler_output: Any) -> KvtierMetadata:
        return self.scheduler.build_meta(scheduler_output)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict | None]:
        self.scheduler.request_finished(request)
        return False, None  # the worker copied what it saves: vLLM may free the blocks now

    # -- worker side --------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        group = self._kv_cache_config.kv_cache_groups[0]
        self.worker.register(kv_caches, group.layer_names, self._kv_cache_config.num_blocks)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        self.worker.load(self._get_connector_metadata().loads)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # start_load_kv loaded every layer already

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return  # wait_for_save copies all layers of the step's filled blocks at once

    def wait_for_save(self) -> None:
        self.worker.save(self._get_connector_metadata().saves)

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker.take_failed_block_ids()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.close()
        else:
            self.scheduler.log_stats()
            self.client.close()


def _check_version(settings: KvtierSettings) -> None:
    if vllm.__version__ == TESTED_VLLM:
        return
    message = (f"kvtier connector: tested with vLLM {TESTED_VLLM}, running {vllm.__version__}; the KV "
               "connector interface and KV cache layout change between releases")
    if not settings.allow_untested_vllm:
        raise ValueError(message + '; install vllm==' + TESTED_VLLM + ' or set "allow_untested_vllm": true '
                         "in kv_connector_extra_config to try anyway")
    log.warning(message)


def _check_parallelism(parallel: Any) -> int:
    others = {"pipeline_parallel_size": parallel.pipeline_parallel_size,
              "decode_context_parallel_size": parallel.decode_context_parallel_size,
              "prefill_context_parallel_size": parallel.prefill_context_parallel_size}
    if any(size > 1 for size in others.values()):
        raise ValueError(f"kvtier connector: only tensor parallelism is supported; got {others}")
    return parallel.tensor_parallel_size


def _tp_rank(tp_size: int) -> int:
    if tp_size == 1:
        return 0
    from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

    return get_tensor_model_parallel_rank()
