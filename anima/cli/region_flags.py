"""The ``anima generate`` flags of regional prompts and reference editing, read into recipe values once.

``--region PLACE:PROMPT`` (repeatable; PLACE a rectangle x0,y0,x1,y1 in 0..1 or a mask image),
``--couple columns|rows`` (the prompt's first line the base prompt, one equal tile per further line,
as Forge Couple's basic mode), ``--regions-base-weight``, ``--regions-end-step``, ``--regions-overlap``;
``--reference IMAGE`` and ``--reference-strength``. Mask and reference files are recorded as absolute
paths with a digest (like --init-image) and checked now, before any model is loaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_region_args(p: argparse.ArgumentParser) -> None:
    from anima.recipe.regions import COUPLE_DIRECTIONS
    from anima.recipe.settings import REGION_OVERLAPS

    g = p.add_argument_group("regional prompts and reference editing")
    g.add_argument(
        "--region", action="append", default=[], metavar="PLACE:PROMPT",
        help="a regional prompt (repeatable): '0,0,0.5,1: blonde girl' (x0,y0,x1,y1 in 0..1) "
        "or 'mask.png: ...'",
    )  # fmt: skip
    g.add_argument(
        "--couple", choices=COUPLE_DIRECTIONS,
        help="split the image into equal columns/rows: the prompt's first line is the base prompt, "
        "each further line a region",
    )  # fmt: skip
    g.add_argument("--regions-base-weight", type=float, help="share of the base prompt inside regions (0.2)")
    g.add_argument("--regions-end-step", type=int, help="regions for the first N steps only (0: all)")
    g.add_argument("--regions-overlap", choices=REGION_OVERLAPS, help="overlapping regions: error or blend")
    g.add_argument("--reference", type=Path, metavar="IMAGE", help="image for reference editing (Edit LoRA)")
    g.add_argument("--reference-strength", type=float, help="scale of the reference latent (1)")


def region_values(args: argparse.Namespace, base, prompt: str | None) -> dict[str, Any]:
    """Recipe values from the flags: ``prompt`` (with --couple), ``regions`` (their masks found and
    fingerprinted) and ``reference`` (the image fingerprinted). Empty when no such flag is given."""
    from anima.errors import AnimaError
    from anima.recipe import Region
    from anima.recipe.regions import couple
    from anima.workflows.init_image import file_digest

    out: dict[str, Any] = {}
    regions: tuple = ()
    if getattr(args, "couple", None):
        text = prompt if prompt is not None else (base.prompt if base is not None else None)
        if text is None:
            raise AnimaError("--couple needs a prompt of several lines")
        out["prompt"], regions = couple(text, args.couple)
    for spec in getattr(args, "region", []) or []:
        regions += (Region.parse(spec),)
    if regions:
        fixed = []
        for r in regions:
            if r.mask:
                path = Path(r.mask)
                if not path.is_file():
                    raise AnimaError(f"region mask {path} not found", setting="regions")
                r = Region(r.prompt, mask=str(path.resolve()), mask_hash=file_digest(path))
            fixed.append(r)
        out["regions"] = tuple(fixed)
    ref = getattr(args, "reference", None)
    if ref is not None:
        from anima.recipe import Reference

        if not ref.is_file():
            raise AnimaError(f"reference image {ref} not found", setting="reference")
        strength = base.reference.strength if base is not None else Reference().strength
        out["reference"] = Reference(image=str(ref.resolve()), image_hash=file_digest(ref), strength=strength)
    return out


def check_region_inputs(recipe) -> None:
    """Load what the recipe's regions and reference need now: mask sizes, overlaps, readable images."""
    if recipe.regions:
        from anima.workflows.regions import region_masks

        region_masks(recipe)
    if recipe.reference.on:
        from anima.workflows.reference import load_reference

        load_reference(recipe.reference)
