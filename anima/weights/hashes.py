"""The "Model hash" A1111 and civitai show: first 10 hex digits of the file's SHA-256 (AutoV2).

Hashing a 4 GB DiT takes seconds, so results are remembered in a small JSON cache keyed by path,
size and mtime (the caller chooses where; the library reads no environment).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 24) -> str:
    """Full SHA-256 (hex) of a file; its first 10 characters are A1111's / civitai's "Model hash"."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_hash(path: str | Path, cache_file: str | Path | None = None) -> str:
    """AutoV2 hash of a file; for a folder (diffusers), of its files in name order."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    cache: dict[str, str] = {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return cache[key]
    if len(files) == 1:
        digest = file_sha256(files[0])
    else:
        h = hashlib.sha256()
        for f in files:
            h.update(file_sha256(f).encode())
        digest = h.hexdigest()
    short = digest[:10]
    if cache_file is not None:
        cache[key] = short
        tmp = Path(f"{cache_file}.{os.getpid()}.tmp")
        try:
            Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)
        except OSError:
            tmp.unlink(missing_ok=True)  # a cache that cannot be written is only slower
    return short
