"""Upscaler model files: ComfyUI's ``models/upscale_models/`` (and A1111/Forge's ``models/ESRGAN``).

Names resolve like LoRA names: a path that exists, else a file in one of these folders of the places
anima searches (the models folder, ComfyUI installs), by file name (``4x-AnimeSharp.pth``) or by stem
(``4x-AnimeSharp``, as A1111 lists them), case-insensitively as a last resort.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from anima.errors import AnimaError

UPSCALER_FOLDERS = ("upscale_models", "ESRGAN", "RealESRGAN")
SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")


def upscaler_files(models_dirs: Iterable[Path]) -> list[Path]:
    """Every upscaler file under the upscaler folders of `models_dirs` (sorted, first folder first)."""
    found: list[Path] = []
    for root in models_dirs:
        for name in UPSCALER_FOLDERS:
            folder = Path(root) / name
            if folder.is_dir():
                found += sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    return found


def resolve_upscaler(name: str | Path, files: Sequence[Path]) -> Path:
    """`name` as a path, else the first file of `files` with that name or stem."""
    path = Path(name)
    if path.is_file():
        return path
    text = str(name)
    for match in (
        [p for p in files if p.name == text],
        [p for p in files if p.stem == text],
        [p for p in files if text.lower() in (p.name.lower(), p.stem.lower())],
    ):
        if match:
            return match[0]
    known = ", ".join(sorted({p.name for p in files})) or "none"
    raise AnimaError(
        f"upscaler model {text!r} not found (a path, or a file in models/upscale_models/; known: {known})",
        setting="hires_upscaler",
    )
