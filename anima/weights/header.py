"""Safetensors headers, read without torch: tensor names, dtypes, shapes and byte ranges.

Discovery classifies model folders by their headers (`anima models` needs no torch), and the
loader maps the tensors (`anima.weights.safetensors`). Parsing the header ourselves also lets us
say exactly what is wrong with a truncated or corrupt file instead of surfacing a Rust panic.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from anima.errors import AnimaError

# safetensors dtype name -> bytes per element
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip

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


# (resolved path, size, mtime) -> parsed header. Discovery classifies a file, the loader then
# reads it: one parse per file and version, however many parts of a command look at it.
_HEADERS: dict[tuple[str, int, int], Header] = {}
_MAX_CACHED = 512


def read_header(path: str | Path) -> Header:
    """Read and validate the header; raises AnimaError naming the file on any defect.

    Parsed once per file version in a process (the `Header` is shared: treat it as read-only)."""
    path = Path(path)
    if not path.exists():
        raise AnimaError(f"{path}: file not found")
    if path.is_dir():
        raise AnimaError(f"{path}: is a folder, expected a .safetensors file")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HEADERS:
        if len(_HEADERS) >= _MAX_CACHED:
            _HEADERS.pop(next(iter(_HEADERS)))
        _HEADERS[key] = _parse_header(path, st.st_size)
    return _HEADERS[key]


def _parse_header(path: Path, size: int) -> Header:
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
        if dtype not in ITEMSIZE:
            raise AnimaError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
        numel = 1
        for s in shape:
            numel *= s
        if hi - lo != numel * ITEMSIZE[dtype] or not 0 <= lo <= hi:
            raise AnimaError(f"{path}: corrupt safetensors header: bad byte range for '{name}'")
        if hi > data_len:
            raise AnimaError(
                f"{path}: file is truncated ({size} bytes; tensor '{name}' needs {data_start + hi}). "
                "Re-download it."
            )
    return Header(path, header, metadata, data_start)
