"""Control units in requests: the native API's ``controls`` and the A1111 API's ControlNet units.

The A1111 form is what sd-webui-controlnet and Forge accept (and `webuiapi.ControlNetUnit` sends):
``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` (any case), each unit an object with
``image`` (base64, or ``{"image": ..., "mask": ...}``; ``input_image`` in older clients), ``mask`` /
``mask_image``, ``module``, ``model`` ("name" or "name [hash]"), ``weight``, ``guidance_start``,
``guidance_end``, ``resize_mode``, ``enabled``, the preprocessor thresholds. Disabled units and units
without a model are skipped (clients send empty units). Fields an LLLite patch has no use for
(control mode, pixel perfect, low VRAM, ...) are accepted and ignored.

Everything is checked when the request arrives (a 400 naming the unit, nothing queued): the patch is
found inside the server's ``model_patches`` folders and fits the served DiT, the images decode within
the upload limits, a mask goes only to a 4-channel patch and has the image's size. The images are
stored with the job (`Submitter.submit`) and the units record their paths and digests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from anima.errors import AnimaError
from anima.recipe import ControlUnit
from anima.server import images
from anima.server.security import Limits
from anima.weights.lllite import patch_config
from anima.workflows.control_preprocess import A1111_MODULES, preprocess
from anima.workflows.control_sources import ControlImage, check_control_image


@dataclass(frozen=True)
class PendingControl:
    """A checked unit whose images are not stored yet (the submitter names them after the job)."""

    unit: ControlUnit
    image: Image.Image  # RGB
    mask: Image.Image | None  # 'L'


def _tensor(im: Image.Image) -> torch.Tensor:
    arr = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    return torch.from_numpy(arr)[None]


def preprocess_image(im: Image.Image, kind: str, *, low: float = 0.1, high: float = 0.2,
                     threshold: float = 0.5) -> Image.Image:  # fmt: skip
    """An RGB image through preprocessor `kind` (`PREPROCESSORS`), as the job will receive it."""
    done = preprocess(_tensor(images.to_rgb(im)), kind, low=low, high=high, threshold=threshold)
    return Image.fromarray((done[0].numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8))


def check(pending: PendingControl, service, model: str | None, index: int) -> None:
    path = service.resolve_patch(pending.unit.model)
    cfg = patch_config(path, service.dit_config(model))
    mask = _tensor(pending.mask) if pending.mask is not None else None
    check_control_image(ControlImage(_tensor(pending.image), mask), cfg.cond_in_channels, index, strict=True)


def native(controls: Sequence[Any], service, limits: Limits, model: str | None) -> list[PendingControl]:
    """`schemas.ControlIn` items -> checked pending units."""
    out = []
    for i, c in enumerate(controls):
        image = images.to_rgb(images.decode_image(c.image, f"controls[{i}].image", limits))
        mask = images.decode_image(c.mask, f"controls[{i}].mask", limits).convert("L") if c.mask else None
        unit = ControlUnit(c.model, strength=c.strength, start=c.start, end=c.end)
        pending = PendingControl(unit, image, mask)
        check(pending, service, model, i)
        out.append(pending)
    return out


def a1111_units(extra: Mapping[str, Any]) -> list[dict]:
    """The enabled ControlNet units of an A1111 request's ``alwayson_scripts``."""
    scripts = extra.get("alwayson_scripts") or {}
    if not isinstance(scripts, Mapping):
        raise AnimaError("alwayson_scripts must be an object")
    units: list[dict] = []
    for name, value in scripts.items():
        if name.lower() != "controlnet":
            continue
        args = value.get("args", []) if isinstance(value, Mapping) else value
        if not isinstance(args, list):
            raise AnimaError("alwayson_scripts.controlnet.args must be a list of units")
        for i, unit in enumerate(args):
            if not isinstance(unit, Mapping):
                raise AnimaError(f"ControlNet unit {i} must be an object")
            if unit.get("enabled", True) is False or str(unit.get("model") or "none").lower() == "none":
                continue
            units.append(dict(unit))
    return units


def _resize_mode(value: Any) -> str:
    modes = {0: "Just Resize", 1: "Crop and Resize", 2: "Resize and Fill"}
    if isinstance(value, int) and not isinstance(value, bool) and value in modes:
        return modes[value]
    text = str(value or "Crop and Resize")
    if text not in modes.values() and text != "Inner Fit (Scale to Fit)":
        raise AnimaError(f"unknown ControlNet resize_mode {value!r}; use {', '.join(modes.values())}")
    return {"Inner Fit (Scale to Fit)": "Crop and Resize"}.get(text, text)


def _fit(im: Image.Image, mode: str, width: int, height: int) -> Image.Image:
    """A1111's resize modes where the aspect ratios differ; the patch itself then crops and resizes
    as the reference does ("Crop and Resize" is that, untouched)."""
    same_aspect = im.width * height == im.height * width
    if mode == "Crop and Resize" or same_aspect:
        return im
    if mode == "Just Resize":
        return im.resize((width, height), Image.Resampling.BICUBIC)
    return ImageOps.pad(im, (width, height), Image.Resampling.BICUBIC)  # Resize and Fill: black bars


def a1111(extra: Mapping[str, Any], service, limits: Limits, model: str | None, width: int,
          height: int) -> tuple[list[PendingControl], list[str]]:  # fmt: skip
    """The A1111 ControlNet units -> (checked pending units, notes)."""
    out, notes = [], []
    for i, u in enumerate(a1111_units(extra)):
        where = f"ControlNet unit {i}"
        raw = u.get("image") or u.get("input_image")
        mask_raw = u.get("mask") or u.get("mask_image")
        if isinstance(raw, Mapping):
            raw, mask_raw = raw.get("image"), mask_raw or raw.get("mask")
        if not isinstance(raw, str) or not raw:
            raise AnimaError(f"{where} has no image (base64)")
        image = images.to_rgb(images.decode_image(raw, f"{where} image", limits))
        mask = None
        if isinstance(mask_raw, str) and mask_raw:
            mask = images.decode_image(mask_raw, f"{where} mask", limits).convert("L")
        module = str(u.get("module") or "none").lower()
        if module not in A1111_MODULES:
            raise AnimaError(f"{where}: preprocessor {module!r} is not available here; use one of "
                             f"{', '.join(sorted(A1111_MODULES))}, or send a preprocessed image with none")
        if A1111_MODULES[module] != "none":
            low, high = (float(u.get(k, 100)) / 255.0 for k in ("threshold_a", "threshold_b"))
            kind = A1111_MODULES[module]
            if kind == "threshold":
                low = high = float(u.get("threshold_a", 127)) / 255.0
            image = preprocess_image(image, kind, low=min(low, high), high=max(low, high), threshold=low)
        mode = _resize_mode(u.get("resize_mode"))
        fitted = _fit(image, mode, width, height)
        if fitted is not image:
            notes.append(f"{where}: resize mode {mode} applied before the patch's own crop and resize")
            mask = _fit(mask, mode, width, height) if mask is not None else None
        try:
            unit = ControlUnit(
                str(u["model"]), strength=float(u.get("weight", 1.0)),
                start=float(u.get("guidance_start", 0.0)), end=float(u.get("guidance_end", 1.0)),
            )  # fmt: skip
        except (TypeError, ValueError):
            raise AnimaError(f"{where}: weight, guidance_start and guidance_end must be numbers") from None
        pending = PendingControl(unit.with_(model=unit.model.split(" [", 1)[0].strip()), fitted, mask)
        check(pending, service, model, i)
        out.append(pending)
    return out, notes
