"""Dtype names users type, and the default precision per device."""

from __future__ import annotations

import torch

from anima.errors import AnimaError
from anima.runtime.cpu_info import cpu_flags

_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}

SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def parse_dtype(name: str | torch.dtype, *, what: str = "dtype") -> torch.dtype:
    """The one place dtype names are read ("bf16", "float32", torch.float16, ...)."""
    if isinstance(name, torch.dtype):
        if name not in SHORT_NAMES:
            raise AnimaError(f"unsupported {what} {name}; use fp32, bf16 or fp16")
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in _NAMES:
        raise AnimaError(f"unknown {what} '{name}'; use fp32, bf16 or fp16 (or auto)")
    return _NAMES[key]


def cpu_has_fast_bf16() -> bool:
    """avx512_bf16 / AMX make bf16 matmuls about 2x fp32 here; without them bf16 is emulated.
    Also needs ATen to dispatch AVX-512: ``ATEN_CPU_CAPABILITY=avx2`` (with oneDNN held to AVX2)
    runs such a machine as an AVX2 one, where bf16 is emulated again."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' (or None): bf16 where the hardware runs it natively, fp16 on older GPUs, else fp32."""
    if name is not None and name != "auto":
        return parse_dtype(name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32
