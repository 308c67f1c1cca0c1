"""Images in and out: float tensors <-> 8-bit pixels, PNG files with their generation settings.

A saved PNG carries two text chunks:

- ``parameters``: the AUTOMATIC1111 "infotext" (prompt line, ``Negative prompt: ...`` line, then
  ``Steps: 30, Sampler: ER SDE, ...``), so A1111/Forge "PNG Info", civitai and image browsers
  read it. ComfyUI sampler and scheduler names are written as their A1111/Forge labels.
- ``anima_recipe``: the full `Recipe` as JSON, lossless; `read_recipe` prefers it.

numpy and PIL are imported on first use so that importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any

from anima.errors import AnimaError
from anima.recipe import Recipe

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
RECIPE_KEY = "anima_recipe"

# ComfyUI sampler name -> A1111 / Forge label (labels as in A1111 1.10 and Forge Neo).
SAMPLER_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "euler": "Euler",
        "euler_ancestral": "Euler a",
        "heun": "Heun",
        "dpm_2": "DPM2",
        "dpm_2_ancestral": "DPM2 a",
        "lms": "LMS",
        "dpm_fast": "DPM fast",
        "dpm_adaptive": "DPM adaptive",
        "dpmpp_2s_ancestral": "DPM++ 2S a",
        "dpmpp_sde": "DPM++ SDE",
        "dpmpp_2m": "DPM++ 2M",
        "dpmpp_2m_sde": "DPM++ 2M SDE",
        "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
        "dpmpp_3m_sde": "DPM++ 3M SDE",
        "ddim": "DDIM",
        "uni_pc": "UniPC",
        "lcm": "LCM",
        "er_sde": "ER SDE",
        "res_multistep": "Res Multistep",
        # ComfyUI's *_gpu variants only move the Brownian noise to the GPU; A1111 has one label.
        # They come after their CPU twins so that reading a label back gives the CPU name.
        "dpmpp_sde_gpu": "DPM++ SDE",
        "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
        "dpmpp_2m_sde_heun_gpu": "DPM++ 2M SDE Heun",
        "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    }
)

# ComfyUI scheduler name -> A1111 / Forge "Schedule type" label.
SCHEDULER_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "simple": "Simple",
        "normal": "Normal",
        "karras": "Karras",
        "exponential": "Exponential",
        "sgm_uniform": "SGM Uniform",
        "beta": "Beta",
        "ddim_uniform": "DDIM",
        "linear_quadratic": "Linear Quadratic",
        "kl_optimal": "KL Optimal",
    }
)


def _invert(labels: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, label in labels.items():
        out.setdefault(label.lower(), name)
    return out


_SAMPLER_NAMES = _invert(SAMPLER_LABELS)
_SCHEDULER_NAMES = {**_invert(SCHEDULER_LABELS), "sgmuniform": "sgm_uniform"}


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


# --------------------------------------------------------------------- A1111 infotext
def _number(value: float) -> str:
    """4.0 -> "4", 4.5 -> "4.5": integral floats print like A1111 prints its slider values."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _quote(value: str) -> str:
    # A1111 JSON-quotes values that would break the "k: v, k: v" line; a leading quote is ours.
    if any(c in value for c in ',:\n"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def a1111_parameters(recipe: Recipe, *, batch_pos: int | None = None) -> str:
    """The A1111 ``parameters`` text for `recipe` (lines: prompt, negative prompt, settings)."""
    pairs: list[tuple[str, str]] = [
        ("Steps", str(recipe.steps)),
        ("Sampler", SAMPLER_LABELS.get(recipe.sampler, recipe.sampler)),
        ("Schedule type", SCHEDULER_LABELS.get(recipe.scheduler, recipe.scheduler)),
        ("CFG scale", _number(recipe.cfg)),
        ("Seed", str(recipe.seed)),
        ("Size", f"{recipe.width}x{recipe.height}"),
    ]
    if recipe.model_hash:
        pairs.append(("Model hash", recipe.model_hash))
    if recipe.model:
        pairs.append(("Model", recipe.model))
    pairs.append(("Shift", _number(recipe.shift)))
    if recipe.denoise != 1.0:
        pairs.append(("Denoising strength", _number(recipe.denoise)))
    if recipe.batch_size > 1:
        pairs.append(("Batch size", str(recipe.batch_size)))
        if batch_pos is not None:
            pairs.append(("Batch pos", str(batch_pos)))
    if recipe.loras:
        pairs.append(("Loras", ", ".join(f"{n}:{_number(w)}" for n, w in recipe.loras)))
    pairs.extend(recipe.extra)
    lines = [recipe.prompt]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


_PAIR = re.compile(r'\s*([A-Za-z][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)\s*(?:,|$)')


def _parse_pairs(line: str) -> list[tuple[str, str]] | None:
    """Split ``k: v, k: "v, w"`` into pairs, or None when the line is not entirely such pairs."""
    pairs, pos = [], 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        if not m or m.end() == pos:
            return None
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        pairs.append((key, value))
        pos = m.end()
    return pairs


def parse_a1111_parameters(text: str) -> dict[str, str]:
    """Inverse of `a1111_parameters`, tolerant of other writers.

    Returns ``prompt``, ``negative_prompt`` ("" when absent) and every "Key: value" setting as
    text, unquoted. The settings line is the last line when it starts with ``Steps:`` or holds
    at least three pairs (A1111's own rule of thumb).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    settings: list[tuple[str, str]] = []
    if lines:
        pairs = _parse_pairs(lines[-1].strip())
        if pairs and (lines[-1].lstrip().startswith("Steps:") or len(pairs) >= 3):
            settings = pairs
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith("Negative prompt:"):
            negative_lines = [line[len("Negative prompt:") :].lstrip(" ")]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    out = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines or [])}
    out.update(settings)
    return out


def _comfy_name(label: str, names: Mapping[str, str]) -> str:
    key = label.strip().lower()
    if key in names:
        return names[key]
    # Already a ComfyUI name, or an unknown label: "DPM++ 2M" -> "dpmpp_2m" style.
    return re.sub(r"\s+", "_", key.replace("++", "pp"))


_STANDARD = {
    "Steps": ("steps", int),
    "CFG scale": ("cfg", float),
    "Seed": ("seed", int),
    "Model hash": ("model_hash", str),
    "Model": ("model", str),
    "Shift": ("shift", float),
    "Denoising strength": ("denoise", float),
    "Batch size": ("batch_size", int),
}
_DROPPED = {"Batch pos"}  # describes one file, not the recipe


def recipe_from_a1111(params: Mapping[str, str]) -> Recipe:
    """A `Recipe` from `parse_a1111_parameters` output; unknown settings land in `extra`."""
    fields: dict[str, Any] = {
        "prompt": params.get("prompt", ""),
        "negative_prompt": params.get("negative_prompt", ""),
    }
    extra: list[tuple[str, str]] = []
    sampler = params.get("Sampler")
    scheduler = params.get("Schedule type")
    if sampler and not scheduler and sampler.lower() not in _SAMPLER_NAMES:
        # Before A1111 1.9 the schedule was part of the label: "DPM++ 2M Karras".
        head, _, tail = sampler.rpartition(" ")
        if head and tail.lower() in _SCHEDULER_NAMES:
            sampler, scheduler = head, tail
    if sampler:
        fields["sampler"] = _comfy_name(sampler, _SAMPLER_NAMES)
    if scheduler and scheduler.lower() != "automatic":
        fields["scheduler"] = _comfy_name(scheduler, _SCHEDULER_NAMES)
    params = dict(params)
    if "Hires upscale" in params and "Denoising strength" in params:
        # In an A1111 hires-fix PNG the denoising strength belongs to the second pass, not img2img.
        strength = params.pop("Denoising strength")
        params.setdefault("Hires denoise", strength)
    for key, value in params.items():
        if key in ("prompt", "negative_prompt", "Sampler", "Schedule type") or key in _DROPPED:
            continue
        if key == "Size":
            m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", value)
            if not m:
                raise AnimaError(f"A1111 parameters: bad Size {value!r}")
            fields["width"], fields["height"] = int(m.group(1)), int(m.group(2))
        elif key in _STANDARD:
            name, kind = _STANDARD[key]
            try:
                fields[name] = kind(value)
            except ValueError:
                raise AnimaError(f"A1111 parameters: {key} {value!r} is not a {kind.__name__}") from None
        elif key == "Loras":
            fields["loras"] = tuple(_parse_lora(item) for item in value.split(", ") if item.strip())
        else:
            extra.append((key, value))
    return Recipe(**fields, extra=tuple(extra))


def _parse_lora(item: str) -> tuple[str, float]:
    name, _, weight = item.strip().rpartition(":")
    try:
        return (name, float(weight)) if name else (item.strip(), 1.0)
    except ValueError:
        return (item.strip(), 1.0)


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


def save_png(
    path: str | Path,
    image_uint8: np.ndarray,
    recipe: Recipe,
    extra_json: Mapping[str, Any] | None = None,
    *,
    batch_pos: int | None = None,
    compress_level: int = 4,
) -> Path:
    """Write one [H,W,3] uint8 image as PNG with ``parameters`` and ``anima_recipe`` text chunks.

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
    info.add_text(PARAMETERS_KEY, a1111_parameters(recipe, batch_pos=batch_pos))
    info.add_text(RECIPE_KEY, recipe.to_json())
    for key, value in (extra_json or {}).items():
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
    """The recipe stored in an image: ``anima_recipe`` if present, else the A1111 ``parameters``."""
    text = read_png_text(path)
    if RECIPE_KEY in text:
        try:
            return Recipe.from_json(text[RECIPE_KEY])
        except AnimaError as exc:
            raise AnimaError(f"{path}: {exc}") from None
    if PARAMETERS_KEY in text:
        try:
            return recipe_from_a1111(parse_a1111_parameters(text[PARAMETERS_KEY]))
        except AnimaError as exc:
            raise AnimaError(f"{path}: {exc}") from None
    raise AnimaError(f"{path} holds no generation settings (no '{RECIPE_KEY}' or '{PARAMETERS_KEY}' text)")


def output_paths(out: str | Path, n: int) -> list[Path]:
    """Where to save `n` images for ``--out OUT``: OUT.png for one; OUT_0.png, OUT_1.png, ... else."""
    if n < 1:
        raise ValueError(f"need at least one image, got {n}")
    out = Path(out)
    if out.suffix.lower() in (".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"):
        raise AnimaError(f"--out {out}: anima writes PNG files; use a .png name")
    base = out.with_suffix("") if out.suffix.lower() == ".png" else out
    if n == 1:
        return [base.with_name(base.name + ".png")]
    return [base.with_name(f"{base.name}_{i}.png") for i in range(n)]
