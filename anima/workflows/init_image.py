"""img2img inputs: load an init image, decide the working size, resize with Lanczos, fingerprint files.

Size policy (for the whole-image modes): without an explicit size the image's own size is used,
centre-cropped to multiples of 8 as ComfyUI's VAEEncode does. With an explicit size that differs,
the image is resized (stretched) to it with Lanczos.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.recipe import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, nearest_valid_size


def load_rgb(path: str | Path) -> torch.Tensor:
    """An image file -> [1, H, W, 3] float32 in [0, 1] (bytes / 255, EXIF rotation applied)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = ImageOps.exif_transpose(im).convert("RGB")
            arr = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise AnimaError(f"{path}: init image not found") from None
    except (UnidentifiedImageError, OSError, IsADirectoryError):
        raise AnimaError(f"{path}: not a readable image") from None
    return torch.from_numpy(arr)[None]


def file_digest(path: str | Path) -> str:
    """First 16 hex digits of the file's sha256: enough to notice that a source file changed."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise AnimaError(f"cannot read {path}: {exc.strerror}") from None
    return h.hexdigest()[:16]


def check_size(width: int, height: int, what: str = "init image") -> None:
    """Refuse a size the model cannot take, naming the nearest size that works."""
    if not (MIN_SIZE <= width <= MAX_SIZE and MIN_SIZE <= height <= MAX_SIZE):
        w, h = nearest_valid_size(width), nearest_valid_size(height)
        raise AnimaError(
            f"the {what} is {width}x{height}, outside {MIN_SIZE}..{MAX_SIZE}: set the size to {w}x{h} to "
            "resize it (Lanczos)",
            setting="size",
        )


def crop_to_multiple(image: torch.Tensor, multiple: int = SIZE_MULTIPLE) -> torch.Tensor:
    """[B, H, W, C] centre-cropped to multiples of `multiple`, as ComfyUI's VAEEncode does: offset
    ``(side % multiple) // 2`` on each axis (140x108 -> 136x104 from (2, 2))."""
    h, w = image.shape[1:3]
    dh, dw = h % multiple, w % multiple
    if not (dh or dw):
        return image
    y, x = dh // 2, dw // 2
    return image[:, y : y + h - dh, x : x + w - dw]


def check_image_tensor(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Validate a [1, H, W, 3] (or [H, W, 3]) float image for the API; returns it as float [1, H, W, 3]."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise AnimaError(f"an init image must be [1, H, W, 3] floats in [0, 1], got {tuple(image.shape)}")
    if tuple(image.shape[1:3]) != (height, width):
        raise AnimaError(
            f"the init image is {image.shape[2]}x{image.shape[1]} but the recipe size is "
            f"{width}x{height}; resize it or set the recipe size to match"
        )
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise AnimaError("the init image contains NaN/inf values")
    return image
