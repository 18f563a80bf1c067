"""Frozen configurations: the model's hyperparameters and the engine's settings.

Each is checked once, when it is made; the classes that use them take only the fields
they need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import EngineError

ARCHITECTURES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are stretched for long contexts (``linear`` or ``llama3``)."""

    kind: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Llama-family decoder (Llama, Qwen2, Mistral, SmolLM)."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    rope_scaling: RopeScaling | None = None
    # Per-frequency divisors of the rotary frequencies (GGUF ``rope_freqs``), if any.
    rope_freq_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise EngineError(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        if self.num_heads % self.num_kv_heads:
            raise EngineError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise EngineError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the engine; the defaults suit SmolLM2 on a CPU.

    The KV pool holds ``num_blocks`` pages if given, else as many as fit in
    ``kv_cache_gb``. ``max_num_batched_tokens`` is the token budget of one step: running
    decodes come first, then prefill chunks of the oldest requests.
    """

    model: str | None = None  # a GGUF file or a Hugging Face folder; None: SmolLM2
    dtype: str = "auto"
    device: str = "auto"  # auto (CUDA if present), cpu, cuda or cuda:N
    block_size: int = 16
    kv_cache_gb: float = 1.0
    num_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's context length
    enable_prefix_caching: bool = True
    # On CUDA, replay decode steps as CUDA graphs (one per batch-size bucket), captured at start.
    cuda_graphs: bool = True
    # Block keys: xxh3_128, or sha256 with a secret for mutually distrustful tenants (the
    # secret goes into every key's root, so keys cannot be predicted without it).
    block_hash: str = "xxh3_128"
    hash_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        positive = {
            "block_size": self.block_size,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise EngineError(f"{name} must be at least 1, got {value}")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise EngineError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if self.num_blocks is None and self.kv_cache_gb <= 0:
            raise EngineError(f"kv_cache_gb must be positive, got {self.kv_cache_gb}")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise EngineError(f"max_model_len must be at least 2, got {self.max_model_len}")
