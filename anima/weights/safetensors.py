"""Safetensors files without a second copy in RAM.

We parse the header ourselves and map the file once with `torch.UntypedStorage.from_file`
(MAP_PRIVATE: pages come from the page cache and are copied only if written). Every tensor is a
view into that mapping, so loading the 4 GB DiT costs address space, not memory, until a dtype
or device conversion actually needs new storage. Parsing the header ourselves also lets us say
exactly what is wrong with a truncated or corrupt file instead of surfacing a Rust panic.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from anima.errors import AnimaError

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

_MAX_HEADER = 100 * 1024 * 1024


class Header:
    """The parsed JSON header of a safetensors file: names, dtypes, shapes, byte ranges."""

    def __init__(self, path: Path, entries: dict[str, dict], metadata: dict[str, str], data_start: int):
        self.path = path
        self.entries = entries
        self.metadata = metadata
        self.data_start = data_start

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v["shape"]) for k, v in self.entries.items()}

    def keys(self) -> list[str]:
        return list(self.entries)


def read_header(path: str | Path) -> Header:
    """Read and validate the header; raises AnimaError naming the file on any defect."""
    path = Path(path)
    if not path.exists():
        raise AnimaError(f"{path}: file not found")
    if path.is_dir():
        raise AnimaError(f"{path}: is a folder, expected a .safetensors file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise AnimaError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise AnimaError(
                f"{path}: not a safetensors file or truncated (header length {n}, file size {size})"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise AnimaError(f"{path}: corrupt safetensors header ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise AnimaError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    for name, e in header.items():
        try:
            dtype, shape, (lo, hi) = e["dtype"], e["shape"], e["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise AnimaError(f"{path}: corrupt safetensors header entry '{name}'") from None
        if dtype not in DTYPES:
            raise AnimaError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        numel = 1
        for s in shape:
            numel *= s
        if hi - lo != numel * DTYPES[dtype].itemsize or not 0 <= lo <= hi:
            raise AnimaError(f"{path}: corrupt safetensors header: bad byte range for '{name}'")
        if hi > data_len:
            raise AnimaError(
                f"{path}: file is truncated ({size} bytes; tensor '{name}' needs {data_start + hi}). "
                "Re-download it."
            )
    return Header(path, header, metadata, data_start)


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
