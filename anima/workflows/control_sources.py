"""Where a control unit's images come from: the files it names, checked against their digests.

A recorded unit (`anima.recipe.ControlUnit`) names its control image and mask by absolute path with a
digest of each; a re-run loads them from there and refuses a file that is missing or has changed
since (the image would silently differ), in one line that says to give it again. Front ends also
check, before any model is loaded, what the patch itself decides: a mask only for a 4-channel
(inpainting) patch, and a mask of the control image's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.recipe import ControlUnit
from anima.workflows import comfy_image, inpaint
from anima.workflows.init_image import file_digest, load_rgb


@dataclass(frozen=True)
class ControlImage:
    """The pixels of one unit: `image` [1, H, W, 3] in [0, 1]; `mask` [1, H', W'] in [0, 1] or None."""

    image: torch.Tensor
    mask: torch.Tensor | None = None


def _recorded(path_text: str, digest: str, what: str, index: int) -> Path:
    path = Path(path_text)
    setting = "control_image" if what == "image" else "control_mask"
    if not path.is_file():
        raise AnimaError(f"control {index}'s {what} {path} is missing; give it again", setting=setting)
    if digest and file_digest(path) != digest:
        raise AnimaError(
            f"control {index}'s {what} {path} has changed since it was recorded; give it again to use it",
            setting=setting,
        )
    return path


def unit_image(unit: ControlUnit, index: int = 0, mask_channel: str = "") -> ControlImage:
    """Load a unit's control image and mask from the paths it names (digests checked); the mask is
    the luminance, or `mask_channel` of the file (a ComfyUI graph's LoadImage alpha / LoadImageMask
    channel, `anima.recipe.ComfyNodes.mask_channel`)."""
    if not unit.image:
        raise AnimaError(f"control {index} ({unit.model}) has no control image", setting="control_image")
    image = load_rgb(_recorded(unit.image, unit.image_hash, "image", index))
    mask = None
    if unit.mask:
        path = _recorded(unit.mask, unit.mask_hash, "mask", index)
        mask = comfy_image.load_mask(path, mask_channel) if mask_channel else inpaint.load_mask(path)
    return ControlImage(image, mask)


def check_control_image(ci: ControlImage, channels: int, index: int = 0, *, strict: bool = True) -> list[str]:
    """The image fits the patch: -> notes. `strict` (CLI, server) makes a mask on a 3-channel patch
    and a mask of another size than the image errors; otherwise (ComfyUI's semantics, which crops
    each on its own and ignores the mask of a 3-channel patch) they are notes."""
    notes = []
    image = ci.image
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[-1] < 3:
        raise AnimaError(f"control {index}'s image must be [1, H, W, 3], got {tuple(image.shape)}")
    if not bool(torch.isfinite(image).all()):
        raise AnimaError(f"control {index}'s image contains NaN/inf values", setting="control_image")
    if ci.mask is None:
        return notes
    if channels != 4:
        text = f"control {index}: this patch takes no mask (3 channels); the mask is ignored"
        if strict:
            raise AnimaError(f"control {index}: this patch takes a 3-channel image, no mask; drop the mask",
                             setting="control_mask")  # fmt: skip
        return [text]
    h, w = image.shape[1:3]
    m = ci.mask if ci.mask.ndim == 3 else ci.mask[None]
    if tuple(m.shape[1:]) != (h, w):
        text = f"control {index}'s mask is {m.shape[2]}x{m.shape[1]} but its image is {w}x{h}"
        if strict:
            raise AnimaError(f"{text}; they must be the same size", setting="control_mask")
        notes.append(f"{text}: each is cropped and resized on its own")
    if not bool(torch.isfinite(m).all()) or m.min() < 0 or m.max() > 1:
        raise AnimaError(f"control {index}'s mask values must be in [0, 1]", setting="control_mask")
    return notes
