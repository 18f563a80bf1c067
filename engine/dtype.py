"""The engine's device and compute dtype, each ``auto`` by default.

``auto`` device: the first CUDA GPU when PyTorch sees one, else the CPU. ``auto`` dtype:
bfloat16 on a GPU, and on a CPU that multiplies it natively.

Weights and the KV cache follow the chosen dtype. On CPUs, bfloat16 matrix products are
fast only with AMX or AVX512-BF16; elsewhere PyTorch emulates them and float32 is faster.
"""

from __future__ import annotations

import torch

from engine.errors import EngineError, UnsupportedModelError

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


def resolve_device(name: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` -> the device the engine runs on."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise EngineError(f"device {name!r}: PyTorch sees no CUDA GPU here; use --device cpu")
        index = int(name[5:] or 0) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise EngineError(
                f"device {name!r}: there are {torch.cuda.device_count()} CUDA devices")
        return name
    raise EngineError(f"device {name!r} is unknown; use auto, cpu, cuda or cuda:N")


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
