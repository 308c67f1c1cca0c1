"""What format a model file is stored in, in a few words, from its header alone (for `anima models`).

Examples: ``safetensors BF16``, ``safetensors, ComfyUI scaled_fp8``, ``GGUF Q4_K (24 Q4_K, 65 BF16)``.
A quantised file is named by its most frequent quantised type (the one that decides its size);
the counts show what else it holds. No torch here: `anima models` lists files without it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from anima.model.ggml_types import PLAIN
from anima.weights.gguf_header import is_gguf, read_gguf
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
    special = describe(dtypes, header.metadata)
    if special:
        return f"safetensors, {special}"
    weights = Counter(d for k, d in dtypes.items() if k.endswith(".weight"))
    return f"safetensors {weights.most_common(1)[0][0]}" if weights else "safetensors"


_COMFY_KEYS = (".comfy_quant", ".weight_scale")


def layout(keys, metadata: Mapping[str, str]) -> str | None:
    """'scaled_fp8', 'comfy_quant' or None (a plain file), from key names and header metadata.

    ``<layer>.weight_scale`` without any JSON config is the INT8 nodes' bare layout (their
    Int8TensorwiseOps write weight + weight_scale): read as comfy_quant with the format taken from
    the weight's dtype."""
    keys = list(keys)
    if "_quantization_metadata" in metadata or any(k.endswith(_COMFY_KEYS) for k in keys):
        return "comfy_quant"
    if any(k.rpartition(".")[2] == "scaled_fp8" or k == "scaled_fp8" for k in keys) or any(
        k.endswith(".scale_weight") for k in keys
    ):
        return "scaled_fp8"
    return None


def describe(tensors_or_dtypes: Mapping[str, str], metadata: Mapping[str, str]) -> str | None:
    """A short label of an 8-bit safetensors file from its header ({key: dtype name}), e.g.
    'comfy_quant (int8_tensorwise+convrot)'; None for a plain file."""
    kind = layout(tensors_or_dtypes, metadata)
    if kind is None:
        return None
    if kind == "scaled_fp8":
        return "ComfyUI scaled_fp8"
    formats: set[str] = set()
    try:
        for cfg in json.loads(metadata.get("_quantization_metadata", "{}")).get("layers", {}).values():
            formats.add(str(cfg.get("format")) + ("+convrot" if cfg.get("convrot") else ""))
    except (ValueError, AttributeError):
        pass
    eight_bit = ("I8", "F8_E4M3", "F8_E5M2")
    dtypes = sorted({v for k, v in tensors_or_dtypes.items() if k.endswith(".weight") and v in eight_bit})
    detail = ", ".join(sorted(formats)) or "/".join(dtypes)
    return f"ComfyUI comfy_quant ({detail})" if detail else "ComfyUI comfy_quant"
