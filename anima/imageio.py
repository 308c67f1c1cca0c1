"""Images in and out: float tensors <-> 8-bit pixels, PNG files with their generation settings.

A saved PNG carries two text chunks:

- ``parameters``: the AUTOMATIC1111 "infotext" (`anima.interop.a1111`), so A1111/Forge "PNG Info",
  civitai and image browsers read it;
- ``anima_recipe``: the full `Recipe` as JSON (`anima.recipe.codec`), lossless; `read_recipe`
  prefers it, and still reads the JSON of earlier anima versions (`anima.interop.legacy`);
- ``prompt`` and ``workflow``: the same image as a ComfyUI graph (API and UI format,
  `anima.interop.comfyui.write`), so ComfyUI opens and re-runs it; left out, with the reason in
  `comfyui_chunks`, for a recipe that ComfyUI's core nodes cannot reproduce.

numpy and PIL are imported on first use so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from anima.errors import AnimaError
from anima.interop import a1111, legacy
from anima.interop.comfyui.write import GraphFiles, GraphUnavailable, api_graph, ui_graph
from anima.recipe import Recipe

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "anima_recipe"


# --------------------------------------------------------------------- pixels
def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[B,H,W,3] (or [H,W,3]) floats in [0,1] -> uint8 of the same shape.

    byte = floor(clip(255 * v, 0, 255)) with a float32 product, as ComfyUI's SaveImage computes it:
    it truncates, it does not round (rounding would change about half of all pixels by one level).
    """
    import numpy as np

    if hasattr(images, "detach"):  # a torch tensor; avoid importing torch for numpy input
        images = images.detach().float().cpu().numpy()
    arr = np.asarray(images, dtype=np.float32)
    if arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected [B,H,W,3] or [H,W,3] RGB images, got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        log.warning("image has NaN/inf values (numerical overflow?); writing them as 0")
        arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.float32(255.0) * arr, 0, 255).astype(np.uint8)


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> float32 tensor [1,H,W,3] in [0,1] (bytes / 255, EXIF rotation applied)."""
    import numpy as np
    import torch
    from PIL import ImageOps

    with _open_image(path) as im:
        rgb = ImageOps.exif_transpose(im).convert("RGB")
        arr = np.asarray(rgb, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(arr).unsqueeze(0)


# --------------------------------------------------------------------- files
def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that `path` holds either its old content or the complete new one.

    `write` fills a temporary file in the same folder, which then replaces `path` with
    `os.replace` (atomic on one filesystem). On any error the temporary file is removed.
    """
    path = Path(path)
    if path.is_dir():
        raise AnimaError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnimaError(f"cannot create folder {path.parent}: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the final permissions (mkstemp would force 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise AnimaError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


COMFY_PROMPT_KEY, COMFY_WORKFLOW_KEY = "prompt", "workflow"


def comfyui_chunks(
    recipe: Recipe, files: GraphFiles | None = None, lora_fits: Callable[[str], bool] | None = None
) -> tuple[dict[str, Any], str | None]:
    """({"prompt": API graph, "workflow": UI graph}, None), or ({}, why) when the recipe uses a
    feature ComfyUI's core nodes do not have (no graph beats one that makes another image).
    `lora_fits(name)`: whether ComfyUI applies all keys of a LoRA (None: not known, so no graph
    for a recipe whose LoRAs anima loaded with its own every-format rule)."""
    try:
        return {
            COMFY_PROMPT_KEY: api_graph(recipe, files, _picture_size, lora_fits),
            COMFY_WORKFLOW_KEY: ui_graph(recipe, files, _picture_size, lora_fits),
        }, None
    except GraphUnavailable as exc:
        return {}, str(exc)


def _picture_size(path: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def save_png(
    path: str | Path,
    image_uint8: np.ndarray,
    recipe: Recipe,
    extra_json: Mapping[str, Any] | None = None,
    *,
    batch_pos: int | None = None,
    compress_level: int = 4,
    comfyui: bool | GraphFiles = True,
) -> Path:
    """Write one [H,W,3] uint8 image as PNG with ``parameters`` and ``anima_recipe`` text chunks,
    and ComfyUI's ``prompt`` / ``workflow`` when the recipe has a ComfyUI graph (`comfyui`: the
    model file names to write into it, or False for none).

    `extra_json` adds one more text chunk per key, holding ``json.dumps(value)`` (for example a
    workflow). The write is atomic: a failure never leaves a partial file at `path`.
    """
    import numpy as np
    from PIL import Image, PngImagePlugin

    arr = np.asarray(image_uint8)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"save_png needs one [H,W,3] uint8 image, got {arr.dtype} {tuple(arr.shape)}")
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111.infotext(recipe, batch_pos=batch_pos))
    info.add_text(RECIPE_KEY, recipe.to_json())
    extra = dict(extra_json or {})
    if comfyui is not False and not {COMFY_PROMPT_KEY, COMFY_WORKFLOW_KEY} & set(extra):  # theirs wins
        extra |= comfyui_chunks(recipe, comfyui if isinstance(comfyui, GraphFiles) else None)[0]
    for key, value in extra.items():
        if key in (PARAMETERS_KEY, RECIPE_KEY) or not 1 <= len(key) <= 79 or not key.isascii():
            raise ValueError(f"bad extra PNG text key {key!r}")
        info.add_text(key, json.dumps(value, ensure_ascii=False))
    image = Image.fromarray(arr)  # [H,W,3] uint8 -> RGB
    return atomic_write(
        path, lambda fh: image.save(fh, format="PNG", pnginfo=info, compress_level=compress_level)
    )


def _open_image(path: str | Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise AnimaError(f"no such image: {path}") from None
    except (UnidentifiedImageError, IsADirectoryError, PermissionError) as exc:
        raise AnimaError(f"cannot read image {path}: {exc}") from None


def read_png_text(path: str | Path) -> dict[str, str]:
    """All text chunks of a PNG (tEXt, zTXt, iTXt); for other formats, PIL's string info fields."""
    with _open_image(path) as im:
        text = getattr(im, "text", None)  # PNG: loads chunks that follow the pixel data too
        if text is None:
            text = {k: v for k, v in im.info.items() if isinstance(v, str)}
        return dict(text)


def read_recipe(path: str | Path) -> Recipe:
    """The recipe stored in an image: ``anima_recipe`` if present (this version's JSON, or an earlier
    version's), else the A1111 ``parameters``."""
    return recipe_from_text(read_png_text(path), str(path))


def recipe_from_text(text: Mapping[str, str], where: str) -> Recipe:
    """The recipe in a PNG's text chunks (see `read_recipe`); `where` names the file in errors."""
    try:
        if RECIPE_KEY in text:
            return recipe_from_json(text[RECIPE_KEY])
        if PARAMETERS_KEY in text:
            return a1111.recipe_from_infotext(a1111.parse_infotext(text[PARAMETERS_KEY]))
    except AnimaError as exc:
        raise AnimaError(f"{where}: {exc}", setting=exc.setting) from None
    raise AnimaError(f"{where} holds no generation settings (no '{RECIPE_KEY}' or '{PARAMETERS_KEY}' text)")


def recipe_from_json(text: str) -> Recipe:
    """A recipe JSON of any anima version: ``anima-recipe/2`` or the older ``anima-recipe/1``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnimaError(f"recipe is not valid JSON: {exc}") from None
    return legacy.recipe_from_data(data)


def output_paths(out: str | Path, n: int) -> list[Path]:
    """Where to save `n` images for an output name: OUT.png for one; OUT_0.png, OUT_1.png, ... else."""
    if n < 1:
        raise ValueError(f"need at least one image, got {n}")
    out = Path(out)
    if out.suffix.lower() in (".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"):
        raise AnimaError(f"output {out}: anima writes PNG files; use a .png name")
    base = out.with_suffix("") if out.suffix.lower() == ".png" else out
    if n == 1:
        return [base.with_name(base.name + ".png")]
    return [base.with_name(f"{base.name}_{i}.png") for i in range(n)]
