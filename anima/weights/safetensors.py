"""Safetensors files without a second copy in RAM.

The header is parsed without torch (`anima.weights.header`); the file is mapped once with
`torch.UntypedStorage.from_file` (MAP_PRIVATE: pages come from the page cache and are copied only
if written). Every tensor is a view into that mapping, so loading the 4 GB DiT costs address
space, not memory, until a dtype or device conversion actually needs new storage.
"""

from __future__ import annotations

from pathlib import Path

import torch

from anima.weights.header import Header, read_header

__all__ = ["DTYPES", "Header", "load_mmap", "read_header", "save"]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


def load_mmap(path: str | Path, header: Header | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a file as CPU views into one private memory map of it."""
    header = header or read_header(path)
    size = Path(path).stat().st_size
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    flat = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,), (1,))
    out: dict[str, torch.Tensor] = {}
    for name, e in header.entries.items():
        dtype = DTYPES[e["dtype"]]
        lo, hi = e["data_offsets"]
        start = header.data_start + lo
        chunk = flat[start : header.data_start + hi]
        if start % dtype.itemsize:
            chunk = chunk.clone()  # misaligned for a zero-copy view: rare, costs one tensor
        out[name] = chunk.view(dtype).reshape(e["shape"])
    return out


def save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata or {"format": "pt"}
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
