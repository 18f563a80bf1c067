"""The engine's compute dtype: ``auto`` picks bfloat16 where the hardware multiplies it natively.

Weights and the KV cache follow the chosen dtype. On CPUs, bfloat16 matrix products are
fast only with AMX or AVX512-BF16; elsewhere PyTorch emulates them and float32 is faster.
"""

from __future__ import annotations

import torch

from engine.errors import UnsupportedModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: trust PyTorch's own dispatch level
        return torch.backends.cpu.get_cpu_capability() == "AMX"
    return any(flag in flags for flag in _BF16_CPU_FLAGS)


def resolve_dtype(name: str, device: str = "cpu") -> torch.dtype:
    """The torch dtype for ``name`` (one of ``DTYPE_CHOICES``) on ``device``."""
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in DTYPES:
        raise UnsupportedModelError(f"dtype {name!r} is unknown; use one of {DTYPE_CHOICES}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the spelling used in KV layout strings."""
    return str(dtype).removeprefix("torch.")
