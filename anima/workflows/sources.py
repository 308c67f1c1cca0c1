"""Where a run's input images come from: paths given now, or the paths a recipe recorded.

A run with an init image / mask records both paths (absolute) and a digest of each file in the
recipe (`Recipe.sources`), so a re-run finds them again and refuses when a file has changed since
(the result would silently differ otherwise).

Size rules (whole-image img2img and inpainting): without an explicit size the working size is the
init image's own, centre-cropped to multiples of 8 (as ComfyUI's VAEEncode does, mask with it);
with one, the image is resized to it (Lanczos) and the mask with it (bilinear). "Only masked"
inpainting never resizes the init image: the crop is what gets resized, to the working size,
which defaults to the image's size rounded to a multiple of 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.recipe import ComfyNodes, Recipe, Sources, nearest_valid_size
from anima.workflows import comfy_image, inpaint
from anima.workflows.init_image import check_size, crop_to_multiple, file_digest, load_rgb
from anima.workflows.resample import resize_images, resize_masks


@dataclass(frozen=True)
class Inputs:
    """Input tensors for `Pipeline.generate` (None when not used)."""

    init_image: torch.Tensor | None = None  # [1, H, W, 3] in [0, 1]
    mask: torch.Tensor | None = None  # [1, H, W] in [0, 1]


@dataclass(frozen=True)
class SourcePlan:
    """What the inputs decide before the recipe is made: the settings to record, the working size
    taken from the init image (None: the size given), and the loaded tensors."""

    sources: Sources
    size: tuple[int, int] | None
    inputs: Inputs


def _recorded(path_text: str, digest: str, what: str) -> Path:
    path = Path(path_text)
    if not path.is_file():
        raise AnimaError(
            f"the recipe's {what} {path} is missing; give the {what} again", setting=what.replace(" ", "_")
        )
    if digest and file_digest(path) != digest:
        raise AnimaError(
            f"the recipe's {what} {path} has changed since; give it again to use it anyway",
            setting=what.replace(" ", "_"),
        )
    return path


def plan_sources(
    *,
    init_path: Path | None,
    mask_path: Path | None,
    recorded: Sources | None = None,
    size: tuple[int, int] | None,
    only_masked: bool = False,
    comfy: ComfyNodes | None = None,
) -> SourcePlan:
    """Inputs given now win over the recorded ones. `size` is the working (width, height) when the
    user gave one, else None (then the init image decides). `comfy`: how a ComfyUI graph prepared
    the image and the mask (`ComfyNodes`), which replaces anima's size policy. Nothing is written."""
    recorded = recorded or Sources()
    init_digest = mask_digest = ""
    if init_path is not None:
        init_digest = file_digest(init_path)
    elif recorded.init_image:
        init_path = _recorded(recorded.init_image, recorded.init_image_hash, "init image")
        init_digest = recorded.init_image_hash or file_digest(init_path)
    if mask_path is not None:
        if init_path is None:
            raise AnimaError("a mask needs an init image (the image to repaint)", setting="init_image")
        mask_digest = file_digest(mask_path)
    elif recorded.mask and init_path is not None:
        mask_path = _recorded(recorded.mask, recorded.mask_hash, "mask")
        mask_digest = recorded.mask_hash or file_digest(mask_path)
    if init_path is None:
        if only_masked:
            raise AnimaError("only-masked inpainting needs a mask and an init image", setting="mask")
        return SourcePlan(Sources(), None, Inputs())
    if mask_path is None and only_masked:
        raise AnimaError("only-masked inpainting needs a mask", setting="mask")
    sources = Sources(
        init_image=str(Path(init_path).resolve()), init_image_hash=init_digest,
        mask=str(Path(mask_path).resolve()) if mask_path is not None else "", mask_hash=mask_digest,
    )  # fmt: skip
    image = load_rgb(init_path)
    if comfy is not None and (comfy.init_resize or comfy.mask_channel or comfy.noise_mask):
        return _comfy_plan(sources, image, mask_path, size, comfy)
    height, width = image.shape[1:3]
    mask = inpaint.check_mask(inpaint.load_mask(mask_path), width, height) if mask_path is not None else None
    if only_masked:
        found = None if size is not None else (nearest_valid_size(width), nearest_valid_size(height))
        return SourcePlan(sources, found, Inputs(image, mask))
    if size is None:
        check_size(width, height)
        image = crop_to_multiple(image)
        mask = None if mask is None else crop_to_multiple(mask[..., None])[..., 0]
        return SourcePlan(sources, (image.shape[2], image.shape[1]), Inputs(image, mask))
    if (width, height) != size:
        image = resize_images(image, size[0], size[1], "lanczos")
        if mask is not None:
            mask = resize_masks(mask, size[0], size[1], "bilinear")
    return SourcePlan(sources, None, Inputs(image, mask))


def _comfy_plan(
    sources: Sources,
    image: torch.Tensor,
    mask_path: Path | None,
    size: tuple[int, int] | None,
    comfy: ComfyNodes,
) -> SourcePlan:
    """The inputs as a ComfyUI graph made them: the recorded preparation, VAEEncode's crop, and the
    mask from its channel (a SetLatentNoiseMask mask keeps its own size)."""
    if comfy.init_resize:
        image = comfy_image.prepare_init(image, comfy.init_resize)
    found = (image.shape[2], image.shape[1])
    if size is not None and found != size:
        raise AnimaError(
            f"the prepared init image is {found[0]}x{found[1]} but the size is {size[0]}x{size[1]}; "
            "a ComfyUI graph's image is not resized again",
            setting="size",
        )
    check_size(*found)
    mask = None
    if mask_path is not None:
        channel = comfy.mask_channel
        mask = comfy_image.load_mask(mask_path, channel) if channel else inpaint.load_mask(mask_path)
        if not comfy.noise_mask:
            mask = inpaint.check_mask(crop_to_multiple(mask[..., None])[..., 0], *found)
    return SourcePlan(sources, found if size is None else None, Inputs(image, mask))


def recipe_inputs(recipe: Recipe) -> Inputs:
    """The inputs a (checked) recipe recorded, at its size: for batches and grid cells."""
    return plan_sources(
        init_path=None, mask_path=None, recorded=recipe.sources, size=(recipe.width, recipe.height),
        only_masked=recipe.inpaint.only_masked, comfy=recipe.comfy,
    ).inputs  # fmt: skip
