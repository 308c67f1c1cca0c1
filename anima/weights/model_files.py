"""What a model file is and what a generation setup consists of: the vocabulary discovery,
downloads and loading share.

`inspect_file` classifies a safetensors or GGUF file from its header alone (a few KB, no tensor data),
with the key-name rules of `anima.weights.file_kinds` that the loaders use too, so discovery
never offers a file the loader would refuse. A `ModelSet` is the resolved files of one setup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from anima.weights import file_kinds
from anima.weights.gguf_header import is_gguf, read_gguf
from anima.weights.header import read_header

Kind = Literal["dit", "text_encoder", "vae", "lora", "lllite", "unknown"]
KIND_NAMES = {
    "dit": "DiT",
    "text_encoder": "text encoder",
    "vae": "VAE",
    "lora": "LoRA",
    "lllite": "ControlNet-LLLite patch",
    "unknown": "unknown",
}
QWEN_TOKENIZER_DIRS = ("qwen", "tokenizer", "qwen25_tokenizer")
T5_TOKENIZER_DIRS = ("t5", "t5_tokenizer")


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from the header alone (keys as stored; llama.cpp names of a GGUF text
    encoder renamed); `AnimaError` names a bad file. Safetensors and GGUF files."""
    if is_gguf(path):
        return read_gguf(path).shapes
    return read_header(path).shapes


@dataclass(frozen=True)
class FileInfo:
    """A classified weight file. `text_width` is the Qwen3 width (a DiT's adapter input or a text
    encoder's hidden size); `latent_channels` is the VAE latent width (a DiT's input or a VAE's)."""

    path: Path
    kind: Kind
    description: str
    text_width: int | None = None
    latent_channels: int | None = None


def _dim(shapes: Mapping[str, tuple[int, ...]], key: str, axis: int) -> int | None:
    shape = shapes.get(key)
    return shape[axis] if shape is not None and len(shape) > axis else None


# file_kinds knows more layouts than discovery needs; the rest count as "unknown" here.
_KINDS: dict[str, Kind] = {
    file_kinds.DIT: "dit",
    file_kinds.TEXT_ENCODER: "text_encoder",
    file_kinds.VAE: "vae",
    file_kinds.VAE_DIFFUSERS: "vae",
    file_kinds.LORA: "lora",
    file_kinds.LLLITE: "lllite",
}


def inspect_file(path: str | Path) -> FileInfo:
    """Classify a safetensors file by its tensor names and read the widths pairing needs."""
    path = Path(path)
    shapes = header_shapes(path)
    found = file_kinds.detect(shapes.keys())
    kind, p = _KINDS.get(found.kind, "unknown"), found.prefix
    if kind == "dit":
        patch_in = _dim(shapes, p + "x_embedder.proj.1.weight", 1)
        return FileInfo(
            path,
            kind,
            found.description,
            text_width=_dim(shapes, p + "llm_adapter.blocks.0.cross_attn.k_proj.weight", 1),
            latent_channels=patch_in // 4 - 1 if patch_in else None,  # (latent + mask) x 2 x 2
        )
    if kind == "text_encoder":
        return FileInfo(path, kind, found.description, text_width=_dim(shapes, p + "embed_tokens.weight", 1))
    if kind == "vae":  # decoder input width = latent channels (Wan naming, then diffusers naming)
        latent = _dim(shapes, "decoder.conv1.weight", 1) or _dim(shapes, "decoder.conv_in.weight", 1)
        return FileInfo(path, kind, found.description, latent_channels=latent)
    return FileInfo(path, kind, found.description)


def sniff_kind(path: str | Path) -> Kind:
    """'dit', 'text_encoder', 'vae', 'lora' or 'unknown'; `AnimaError` naming the file if unreadable."""
    return inspect_file(path).kind


# --------------------------------------------------------------------- tokenizers
def is_qwen_tokenizer_dir(d: Path) -> bool:
    return ((d / "vocab.json").is_file() and (d / "merges.txt").is_file()) or (d / "tokenizer.json").is_file()


def is_t5_tokenizer_dir(d: Path) -> bool:
    return (d / "tokenizer.json").is_file() or (d / "spiece.model").is_file()


def tokenizers_in(root: Path) -> tuple[Path | None, Path | None]:
    """(qwen, t5) tokenizer folders directly under `root` (qwen/ t5/, tokenizer/ t5_tokenizer/, ...)."""
    qwen = next((root / n for n in QWEN_TOKENIZER_DIRS if is_qwen_tokenizer_dir(root / n)), None)
    t5 = next((root / n for n in T5_TOKENIZER_DIRS if is_t5_tokenizer_dir(root / n)), None)
    return qwen, t5


@dataclass(frozen=True)
class ModelSet:
    """Files for one generation setup. For a diffusers-format pipeline `diffusers` is its root
    folder and `dit`, `text_encoder`, `vae` are its transformer/, text_encoder/, vae/ subfolders
    (or explicit files that override them); otherwise these are the three ComfyUI files."""

    name: str
    dit: Path
    text_encoder: Path
    vae: Path
    qwen_tokenizer: Path | None
    t5_tokenizer: Path | None
    source: str
    diffusers: Path | None = None
