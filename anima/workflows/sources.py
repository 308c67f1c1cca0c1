"""Where a run's input images come from: flags, or the paths a PNG recorded; sizes checked.

A run with ``--init-image`` / ``--mask`` records both paths (absolute) and a digest of each file in
the recipe, so ``--from-png`` finds them again and refuses when a file has changed since (the
result would silently differ otherwise).

Size rules (whole-image img2img and inpainting): without an explicit size the working size is the
init image's own (which must be a multiple of 16); with one, the image is resized to it (Lanczos)
and the mask with it (bilinear). "Only masked" inpainting never resizes the init image: the crop
is what gets resized, to the working size, which defaults to the image's size rounded to a
multiple of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.recipe import nearest_valid_size
from anima.recipe.settings import Workflow


@dataclass(frozen=True)
class Sources:
    """Input tensors for `Pipeline.generate` (None when not used)."""

    init_image: torch.Tensor | None = None  # [1, H, W, 3] in [0, 1]
    mask: torch.Tensor | None = None  # [1, H, W] in [0, 1]


def _recorded(path_text: str, digest: str, what: str, flag: str) -> Path:
    from anima.workflows.init_image import file_digest

    path = Path(path_text)
    if not path.is_file():
        raise AnimaError(f"the recipe's {what} {path} is missing; pass {flag} to use another file")
    if digest and file_digest(path) != digest:
        raise AnimaError(f"the recipe's {what} {path} has changed since; pass {flag} to use it anyway")
    return path


def resolve_sources(
    recipe,
    *,
    init_path: Path | None,
    mask_path: Path | None,
    size_explicit: bool,
):
    """-> (recipe with sizes and source paths recorded, `Sources`). Nothing is written."""
    from anima.workflows import inpaint
    from anima.workflows.init_image import check_size, file_digest, load_rgb
    from anima.workflows.resample import resize_images, resize_masks

    wf = Workflow.from_recipe(recipe)
    if init_path is not None:
        wf = wf.with_(init_image=str(Path(init_path).resolve()), init_image_hash=file_digest(init_path))
    elif wf.init_image:
        init_path = _recorded(wf.init_image, wf.init_image_hash, "init image", "--init-image")
    if mask_path is not None:
        if init_path is None:
            raise AnimaError("--mask needs --init-image (the image to repaint)")
        wf = wf.with_(mask=str(Path(mask_path).resolve()), mask_hash=file_digest(mask_path))
    elif wf.mask and init_path is not None:
        mask_path = _recorded(wf.mask, wf.mask_hash, "mask", "--mask")
    if init_path is None:
        if wf.only_masked and not wf.mask:
            raise AnimaError("only-masked inpainting needs --mask and --init-image")
        return recipe, Sources()
    if mask_path is None and wf.only_masked:
        raise AnimaError("only-masked inpainting needs --mask")

    image = load_rgb(init_path)
    height, width = image.shape[1:3]
    mask = None
    if mask_path is not None:
        mask = inpaint.check_mask(inpaint.load_mask(mask_path), width, height)
    if wf.only_masked:
        if not size_explicit:
            recipe = recipe.with_(width=nearest_valid_size(width), height=nearest_valid_size(height))
    elif not size_explicit:
        check_size(width, height)
        recipe = recipe.with_(width=width, height=height)
    elif (width, height) != (recipe.width, recipe.height):
        image = resize_images(image, recipe.width, recipe.height, "lanczos")
        if mask is not None:
            mask = resize_masks(mask, recipe.width, recipe.height, "bilinear")
    return wf.apply(recipe), Sources(image, mask)
