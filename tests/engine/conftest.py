import os
import shutil
import socket

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    """Tests run on shared 2-core machines; more threads than cores only adds contention."""
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def black_hole():
    """A peer that accepts connections and never answers: a stalled service."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"kvtier://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture(scope="session")
def smollm_path():
    from engine.model.loader import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smollm_checkpoint(smollm_path):
    """SmolLM2's weights in float32, loaded once for every test that needs them."""
    from engine.model.loader import load_checkpoint

    return load_checkpoint(str(smollm_path), torch.float32)


@pytest.fixture(scope="session")
def smollm_engines(smollm_checkpoint):
    """dtype -> an engine on SmolLM2, built lazily, shared by the session."""
    from engine.config import EngineConfig
    from engine.runtime.llm_engine import LLMEngine

    engines = {}

    def get(dtype: str) -> LLMEngine:
        if dtype not in engines:
            config = EngineConfig(dtype=dtype, kv_cache_gb=0.25, max_num_batched_tokens=512)
            engines[dtype] = LLMEngine(config, smollm_checkpoint)
        return engines[dtype]

    return get


@pytest.fixture(scope="session")
def hf_gguf_dir(smollm_path, tmp_path_factory):
    """A folder holding (a link to) the GGUF, as transformers wants it offline."""
    folder = tmp_path_factory.mktemp("smollm-gguf")
    try:
        os.symlink(smollm_path, folder / smollm_path.name)
    except OSError:
        shutil.copy(smollm_path, folder / smollm_path.name)
    return folder


@pytest.fixture(scope="session")
def hf_smollm(hf_gguf_dir, smollm_path):
    """transformers' LlamaForCausalLM loaded from the same GGUF, float32: the reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        hf_gguf_dir, gguf_file=smollm_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="session")
def hf_tokenizer(hf_gguf_dir, smollm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_gguf_dir, gguf_file=smollm_path.name)
