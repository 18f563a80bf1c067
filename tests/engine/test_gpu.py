"""The engine on a CUDA GPU against the engine on the CPU, on random-weight models.

Tests marked ``gpu`` are skipped without CUDA; ``make gpu-check`` runs them on a GPU machine.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import httpx
import pytest
import torch

from cacheserver.process import free_port
from engine.config import EngineConfig, ModelConfig
from engine.runtime.llm_engine import LLMEngine
from engine.runtime.sampling_params import SamplingParams
from tests.engine.tiny import TINY, tiny_checkpoint, write_chat_model

# Big enough for real kernels (head_dim 64, 4 query heads per KV head), small enough to be quick.
SMALL = replace(TINY, vocab_size=258, hidden_size=256, intermediate_size=512, num_layers=3, num_heads=8,
                num_kv_heads=2, head_dim=64, max_position=1024)
GROUP3 = replace(SMALL, num_heads=6, num_kv_heads=2)  # SmolLM2's 3 query heads per KV head

PROMPTS = [list(range(1, 70)), [*range(1, 50), 7, 8, 9], list(range(100, 140)), [5],
           [*range(1, 70), 11, 12]]  # shares 4 blocks with the first: a warm prefill


def engine_on(device: str, config: ModelConfig = SMALL, **settings) -> LLMEngine:
    cfg = {"dtype": "float32", "device": device, "block_size": 16, "num_blocks": 64, "max_num_seqs": 8,
           "max_num_batched_tokens": 48} | settings  # 48: long prompts prefill in chunks
    return LLMEngine(EngineConfig(**cfg), tiny_checkpoint(config))


def greedy(engine: LLMEngine, n: int = 24) -> list:
    return engine.generate(PROMPTS, SamplingParams(max_tokens=n, temperature=0, logprobs=3, ignore_eos=True))


def assert_same_answers(cold: list, warm: list) -> None:
    """The same greedy tokens, and logprobs within 1e-3."""
    for a, b in zip(cold, warm, strict=True):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs, strict=True):
            assert all(abs(la[t] - lb[t]) < 1e-3 for t in la.keys() & lb.keys())


@pytest.mark.gpu
@pytest.mark.parametrize("config", [SMALL, GROUP3], ids=["group4", "group3"])
def test_cuda_float32_matches_cpu(config):
    """Same greedy tokens through chunked prefill, a prefix hit and graph-replayed decodes;
    the chosen tokens' logprobs within 1e-3; and the same logits at every prompt position."""
    cpu, gpu = engine_on("cpu", config), engine_on("cuda", config)
    assert gpu.runner.graphs is not None
    # Then a lone request after a hit: a warm step, replayed from a graph.
    runs = [[*greedy(e), *e.generate([[*range(1, 70), 20, 21, 22]], SamplingParams(
        max_tokens=8, temperature=0, logprobs=3, ignore_eos=True))] for e in (cpu, gpu)]
    for a, b in zip(*runs, strict=True):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs, strict=True):
            assert all(abs(la[t] - lb[t]) < 1e-3 for t in la.keys() & lb.keys())
    assert runs[1][4].num_cached_tokens == runs[0][4].num_cached_tokens > 0  # a warm prefill beside others
    assert runs[1][5].num_cached_tokens == 64
    replays = gpu.runner.graphs.replays
    print(f"steps on the GPU: {replays}")
    assert replays["decode"] > 0 and replays["warm"] > 0 and replays["eager"] > 0
    prompt = list(range(3, 200))
    diff = (cpu.score(prompt) - gpu.score(prompt).cpu()).abs().max().item()
    print(f"float32 score, max |cpu - cuda| logit: {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.gpu
def test_cuda_bfloat16_as_close_to_float32_as_the_cpu_in_bfloat16():
    """bfloat16 on the GPU is as accurate as bfloat16 on the CPU, both against float32."""
    prompt = list(range(3, 250))  # token ids below the vocabulary (258)
    ref = engine_on("cpu").score(prompt)

    def error(logits: torch.Tensor) -> tuple[float, float]:
        """(mean |error| / std of the reference, top-1 agreement)."""
        return ((ref - logits).abs().mean().item() / ref.std().item(),
                (ref.argmax(-1) == logits.argmax(-1)).float().mean().item())

    cpu_err, cpu_agree = error(engine_on("cpu", dtype="bfloat16").score(prompt))
    gpu_err, gpu_agree = error(engine_on("cuda", dtype="bfloat16").score(prompt).cpu())
    print(f"bfloat16 vs float32: cuda error {gpu_err:.4f}, agreement {gpu_agree:.3f}; "
          f"cpu error {cpu_err:.4f}, agreement {cpu_agree:.3f}")
    assert gpu_err < 1.25 * cpu_err
    assert gpu_agree > cpu_agree - 0.05


@pytest.mark.gpu
def test_cuda_graphs_match_eager():
    """Decode steps replayed from CUDA graphs give what eager steps give."""
    graphs = engine_on("cuda", dtype="bfloat16")
    eager = engine_on("cuda", dtype="bfloat16", cuda_graphs=False)
    assert graphs.runner.graphs is not None and eager.runner.graphs is None
    for a, b in zip(greedy(graphs, 32), greedy(eager, 32), strict=True):
        assert a.token_ids == b.token_ids
        for la, lb in zip(a.logprobs, b.logprobs, strict=True):
            assert all(abs(la[t] - lb[t]) < 0.05 for t in la.keys() & lb.keys())


@pytest.mark.gpu
def test_seeded_sampling_on_cuda_is_reproducible():
    gpu = engine_on("cuda", dtype="bfloat16")
    params = SamplingParams(max_tokens=16, temperature=0.8, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    first = gpu.generate(PROMPTS[:3], params)
    again = gpu.generate(PROMPTS[:3], params)
    assert [o.token_ids for o in first] == [o.token_ids for o in again]


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [None, 1, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "block_size"), [(32, 8, 16), (9, 3, 16), (4, 2, 4)])
def test_paged_kernel_matches_reference(dtype, heads, kv_heads, block_size, splits):
    from engine.model.triton_kernels import paged_attention_triton

    g = torch.Generator("cuda").manual_seed(0)
    d, layers, num_blocks = 128, 2, 64
    kv = torch.randn(num_blocks, layers, 2, block_size, kv_heads, d, device="cuda", generator=g).to(dtype)
    k_cache, v_cache = kv[:, 1, 0], kv[:, 1, 1]  # a layer's strided views, as the engine has them
    q_lens, ctx_lens = [1, 1, 7, 130, 1, 64], [5, 200, 7, 300, 1, 64 + 33]
    q_starts = [sum(q_lens[:i]) for i in range(len(q_lens))]
    pick = torch.Generator().manual_seed(0)
    tables = [torch.randint(num_blocks, (-(-c // block_size),), generator=pick).tolist() for c in ctx_lens]
    width = max(map(len, tables))
    tables = [t + [0] * (width - len(t)) for t in tables]
    q = torch.randn(sum(q_lens), heads, d, device="cuda", generator=g).to(dtype)
    out = torch.zeros_like(q)

    def dev(x):
        return torch.tensor(x, device="cuda")

    chunks = [0, 1, 3, 4, 5]  # chunk 2 is left alone: its rows stay zero
    paged_attention_triton(q, k_cache, v_cache, out, chunks=dev(chunks), q_starts=dev(q_starts),
                           q_lens=dev(q_lens), ctx_lens=dev(ctx_lens), block_tables=dev(tables),
                           max_q_len=max(q_lens), splits=splits)
    group = heads // kv_heads
    for c in chunks:
        pages = tables[c][: -(-ctx_lens[c] // block_size)]
        k = k_cache[pages].flatten(0, 1)[: ctx_lens[c]].float().repeat_interleave(group, 1)  # [S, Hq, D]
        v = v_cache[pages].flatten(0, 1)[: ctx_lens[c]].float().repeat_interleave(group, 1)
        rows = slice(q_starts[c], q_starts[c] + q_lens[c])
        scores = torch.einsum("nhd,shd->hns", q[rows].float(), k) / math.sqrt(d)
        q_pos = ctx_lens[c] - q_lens[c] + torch.arange(q_lens[c], device="cuda")
        future = torch.arange(ctx_lens[c], device="cuda")[None, None, :] > q_pos[None, :, None]
        want = torch.einsum("hns,shd->nhd", scores.masked_fill(future, float("-inf")).softmax(-1), v)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        assert (out[rows].float() - want).abs().max().item() < tol, c
    assert not out[q_starts[2] : q_starts[2] + q_lens[2]].any()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_openai_client_against_kvtier_engine(tmp_path, device):
    """``kvtier engine --device ...`` on a Hugging Face folder answers the official client,
    streamed and not, and the second request reuses the first one's blocks."""
    openai = pytest.importorskip("openai")
    model = write_chat_model(tmp_path / "model", SMALL)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    log = (tmp_path / "engine.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "clients.cli", "engine", "--model", str(model),
                             "--device", device, "--port", str(port), "--kv-cache-gb", "0.05"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the engine did not come up"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        messages = [{"role": "system", "content": "You are a helpful assistant who answers briefly. " * 3},
                    {"role": "user", "content": "Say something."}]
        first = client.chat.completions.create(model="model", messages=messages, max_tokens=8, temperature=0)
        assert first.choices[0].message.content is not None
        assert first.usage.completion_tokens > 0
        stream = client.chat.completions.create(model="model", messages=messages, max_tokens=8, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == first.choices[0].message.content  # greedy: the same reply
        assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.mark.gpu
def test_staging_ring_on_cuda_orders_its_copies_both_ways_and_the_host_never_waits(served):
    """Pages reach the service byte for byte through the pinned ring, copied after the late
    kernel that wrote them; a kernel on the current stream that overwrites them right after
    staging runs only after their (late) copies; the host waits for none of it."""
    from engine.model.kv_cache import KVCache, PageLayout
    from engine.runtime.connector import CacheConnector, ConnectorConfig, SavedBlock
    from engine.runtime.staging import StagingRing
    from hashing.keys import BlockHasher, Namespace

    layout = PageLayout(num_layers=4, block_size=16, num_kv_heads=2, head_dim=64, dtype=torch.bfloat16)
    cache = KVCache(layout, num_blocks=8, device="cuda")
    values = torch.randn(cache.kv.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    block_ids = [5, 2, 7, 1, 4]
    want = [bytes(values[b].to(layout.dtype).view(-1).view(torch.uint8).cpu().numpy()) for b in block_ids]
    ring = StagingRing(6, layout.nbytes, "cuda")
    assert ring.host.is_pinned()
    for s in ring.stage([cache.page(0)]):  # every kernel launched once before the timed part
        s.wait()
        s.release()
    cache.kv.copy_(values)
    cache.kv.zero_()
    torch.cuda._sleep(1)
    torch.cuda.synchronize()
    # 1. A late step writes the pages: the copies must wait for it (else they read zeros).
    torch.cuda._sleep(int(5e8))  # about 0.25 s
    cache.kv.copy_(values)
    staged = ring.stage([cache.page(b) for b in block_ids[:3]])
    # 2. Late copies: the next step's overwrite must wait for them (else they read zeros).
    with torch.cuda.stream(ring._stream):
        torch.cuda._sleep(int(5e8))
    staged += ring.stage([cache.page(b) for b in block_ids[3:]])
    cache.kv.zero_()
    assert not torch.cuda.current_stream().query()  # the host did not wait for any of it
    hasher = BlockHasher(Namespace("gpu-staging", layout.name), layout.block_size)
    keys = hasher.keys(list(range(layout.block_size * len(block_ids))))
    connector = CacheConnector(ConnectorConfig(served.data_url))
    try:
        connector.save([SavedBlock(k, keys[i - 1] if i else hasher.root, i, s.view, s)
                        for i, (k, s) in enumerate(zip(keys, staged, strict=True))])
        assert connector.flush(30)
        assert connector.stats.saved_blocks == 5 and connector.stats.save_dropped == 0
        assert [bytes(g) for g in connector.client.get(keys)] == want
    finally:
        connector.close()
    torch.cuda.synchronize()
    assert not cache.kv.any()  # the overwrite did run, after the copies
    assert len(ring.stage([cache.page(b) for b in range(8)])) == 6  # every slot came back


@pytest.mark.gpu
def test_cuda_engine_saves_its_pages_through_the_staging_ring(served):
    """An engine on CUDA saves every block that fills, and the service holds the pages' bytes."""
    from engine.runtime.connector import CacheConnector, ConnectorConfig

    connector = CacheConnector(ConnectorConfig(served.data_url))
    engine = LLMEngine(EngineConfig(dtype="bfloat16", device="cuda", block_size=16, num_blocks=64,
                                    max_num_seqs=8, max_num_batched_tokens=48),
                       tiny_checkpoint(SMALL), connector)
    try:
        prompt = PROMPTS[0]  # 69 tokens: 4 full blocks, prefilled in two chunks, a fifth while decoding
        out = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))[0]
        assert connector.flush(30)
        keys = engine.hasher().keys([*prompt, *out.token_ids][:-1])  # the last token is not computed
        assert len(keys) == 5
        assert connector.stats.saved_blocks == 5 and connector.stats.save_dropped == 0
        pages = [bytes(engine.kv_cache.page(engine.block_manager.cached_block_id(k)).cpu().numpy())
                 for k in keys]
        assert [bytes(g) for g in connector.client.get(keys)] == pages
    finally:
        connector.close()


@pytest.mark.gpu
@pytest.mark.parametrize("tier", ["dram", "hbm"])
def test_cuda_engine_loads_hits_straight_from_the_services_memory_and_outlives_it(serve_factory, tier):
    """A second CUDA engine on the service's Unix socket gets the first one's blocks with no
    payload over the socket: by DMA out of the service's shared DRAM slab, or GPU to GPU out
    of its HBM slab opened by CUDA IPC (a service whose DRAM holds one block keeps the rest
    in HBM). It answers exactly as the first did, and keeps answering after the service is
    killed."""
    from engine.runtime.connector import CacheConnector, ConnectorConfig

    hbm = {"dram_gb": 64 / 2**20, "hbm_gb": 4 / 1024, "flash_gb": 0}  # DRAM for one block, 4 MiB of HBM
    served = serve_factory(**(hbm if tier == "hbm" else {}))

    def engine() -> LLMEngine:
        connector = CacheConnector(ConnectorConfig(served.unix_url, device="cuda"))
        return LLMEngine(EngineConfig(dtype="float32", device="cuda", block_size=16, num_blocks=64,
                                      max_num_seqs=8, max_num_batched_tokens=48),
                         tiny_checkpoint(SMALL), connector)

    first, second = engine(), engine()
    try:
        cold = greedy(first)
        assert first.connector.flush(30)
        warm = greedy(second)
        assert_same_answers(cold, warm)
        stats, counters = second.connector.stats, second.connector.client.counters
        assert stats.hits_by_tier[tier] >= 3 and stats.moved_blocks == 0
        assert counters.mapped_bytes == stats.fetched_bytes > 0  # no payload over the socket
        assert (second.connector.client._slabs.get("hbm") is not None) == (tier == "hbm")
        served.stop(signal.SIGKILL)
        after = second.generate([list(range(200, 260))], SamplingParams(max_tokens=8, temperature=0))[0]
        assert after.finished and len(after.token_ids) == 8
    finally:
        first.connector.close()
        second.connector.close()
