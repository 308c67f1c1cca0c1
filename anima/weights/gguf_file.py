"""GGUF tensors mapped without a copy: plain types as torch tensors, quantised ones as packed blocks.

The header (names, types, torch-order shapes, offsets) comes from `anima.weights.gguf_header`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anima.weights.gguf_header import GGUFHeader, is_gguf, read_gguf
from anima.weights.packed import GGMLTensor

__all__ = ["GGUFHeader", "is_gguf", "load_gguf", "read_gguf"]
_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_gguf(path: str | Path, header: GGUFHeader | None = None) -> dict[str, torch.Tensor | GGMLTensor]:
    """Every tensor as a view into one private memory map of the file: F32/F16/BF16 as torch tensors,
    quantised ones as `GGMLTensor` (raw blocks, dequantised by the layer that uses them)."""
    header = header or read_gguf(path)
    size = Path(path).stat().st_size
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    flat = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,), (1,))
    out: dict[str, torch.Tensor | GGMLTensor] = {}
    for name, t in header.tensors.items():
        raw = flat[t.offset : t.offset + t.nbytes]
        if t.qtype in _TORCH:
            dtype = _TORCH[t.qtype]
            if t.offset % dtype.itemsize:
                raw = raw.clone()
            out[name] = raw.view(dtype).reshape(t.shape)
        else:
            rows = t.shape[0] if len(t.shape) > 1 else 1
            out[name] = GGMLTensor(raw.reshape(rows, -1), t.qtype, t.shape)
    return out
