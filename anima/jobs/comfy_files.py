"""Finding the files a ComfyUI graph names: models by ComfyUI folder, pictures in input folders.

A graph names files as ComfyUI lists them: relative to a models/ subfolder (``unet_name``
``anima-base-v1.0.safetensors`` in ``diffusion_models/`` or the legacy ``unet/``, ``clip_name``
in ``text_encoders/`` or ``clip/``, ``vae_name`` in ``vae/``, ``lora_name`` in ``loras/``,
``ckpt_name`` in ``checkpoints/``, possibly with subfolders and Windows separators), and pictures
relative to ComfyUI's ``input/`` folder, possibly annotated (``name.png [input]``). The models roots
are the models folders given (``--models-dir``) and the ``models/`` of ComfyUI installs; the
picture folders are ``--input-dir``, the graph's own folder, then the installs' ``input/``.
Every miss is one line naming the node, the file and where it was looked for, before any model
loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from anima.errors import AnimaError

FOLDERS = {
    "unet": ("diffusion_models", "unet"),
    "clip": ("text_encoders", "clip"),
    "vae": ("vae",),
    "lora": ("loras",),
    "checkpoint": ("checkpoints",),
    "model_patch": ("model_patches",),
}
WHAT = {
    "unet": "diffusion model",
    "clip": "text encoder",
    "vae": "VAE",
    "lora": "LoRA",
    "checkpoint": "checkpoint",
    "model_patch": "model patch",
}
_ANNOTATIONS = (" [input]", " [output]", " [temp]")


@dataclass(frozen=True)
class GraphPlaces:
    """Where a graph's names are looked up: models roots (folders holding diffusion_models/ etc.)
    and picture folders, in order."""

    model_roots: tuple[Path, ...]
    input_dirs: tuple[Path, ...]

    @classmethod
    def make(
        cls,
        models_dirs: Sequence[Path],
        comfyui_dirs: Sequence[Path],
        input_dirs: Sequence[Path],
        graph_dir: Path | None = None,
    ) -> GraphPlaces:
        roots = [Path(d) for d in models_dirs]
        inputs = [Path(d) for d in input_dirs] + ([Path(graph_dir)] if graph_dir is not None else [])
        for c in map(Path, comfyui_dirs):
            root = c.parent if c.name == "models" and (c.parent / "input").is_dir() else c
            roots.append(root / "models" if (root / "models").is_dir() else root)
            inputs.append(root / "input")
        return cls(tuple(dict.fromkeys(roots)), tuple(dict.fromkeys(inputs)))


def _relative(name: str) -> Path:
    return Path(*name.replace("\\", "/").split("/"))


def model_file(kind: str, name: str, places: GraphPlaces, node: str = "") -> Path:
    """The file of a ComfyUI model name (a path that exists is taken as it is)."""
    if Path(name).is_absolute() and Path(name).is_file():
        return Path(name)
    rel = _relative(name)
    for root in places.model_roots:
        for folder in FOLDERS[kind]:
            if (root / folder / rel).is_file():
                return root / folder / rel
        if (root / rel).is_file():  # a flat models folder
            return root / rel
    searched = ", ".join(str(r / FOLDERS[kind][0]) for r in places.model_roots) or "no models folder given"
    where = f"{node}: " if node else ""
    raise AnimaError(
        f"{where}{WHAT[kind]} {name!r} not found (looked in {searched}); pass --models-dir or --comfyui"
    )


def input_file(name: str, places: GraphPlaces, node: str = "") -> Path:
    """A LoadImage picture by its ComfyUI name."""
    clean = name
    for tag in _ANNOTATIONS:
        if clean.endswith(tag):
            clean = clean[: -len(tag)]
    if Path(clean).is_absolute() and Path(clean).is_file():
        return Path(clean)
    rel = _relative(clean)
    for d in places.input_dirs:
        if (d / rel).is_file():
            return d / rel
    searched = ", ".join(str(d) for d in places.input_dirs) or "no input folder"
    where = f"{node}: " if node else ""
    raise AnimaError(f"{where}input image {name!r} not found (looked in {searched}); pass --input-dir")


def picture_size(path: Path) -> tuple[int, int]:
    """(width, height) of a picture as LoadImage sees it (after its EXIF rotation); header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn
                w, h = h, w
    except (UnidentifiedImageError, OSError):
        raise AnimaError(f"{path}: not a readable image") from None
    return w, h
