"""What format a model file is stored in, in a few words, from its header alone (for `anima models`).

Examples: ``safetensors BF16``, ``safetensors, ComfyUI scaled_fp8``, ``GGUF Q4_K (24 Q4_K, 65 BF16)``.
A quantised file is named by its most frequent quantised type (the one that decides its size);
the counts show what else it holds.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from anima.model.ggml import PLAIN
from anima.weights import quant_files
from anima.weights.gguf_file import is_gguf, read_gguf
from anima.weights.header import read_header


def describe_format(path: str | Path) -> str:
    """A short label of how `path` stores its tensors; AnimaError for an unreadable file."""
    path = Path(path)
    if path.is_dir():
        return "diffusers folder"
    if is_gguf(path):
        counts = read_gguf(path).qtypes()
        quantised = [q for q in counts if q not in PLAIN]
        main = quantised[0] if quantised else next(iter(counts), "empty")
        detail = ", ".join(f"{n} {q}" for q, n in counts.items())
        return f"GGUF {main} ({detail})"
    header = read_header(path)
    dtypes = {k: e["dtype"] for k, e in header.entries.items()}
    special = quant_files.describe(dtypes, header.metadata)
    if special:
        return f"safetensors, {special}"
    weights = Counter(d for k, d in dtypes.items() if k.endswith(".weight"))
    return f"safetensors {weights.most_common(1)[0][0]}" if weights else "safetensors"
