"""The ``anima generate`` flags for the workflow settings, and flags -> typed settings, once.

Each flag's destination is a flat setting name of the recipe (`anima.recipe.SETTINGS`): argparse
types the value, `workflow_settings` collects the flags given explicitly, and the recipe checks
them when it is made. Nothing here is parsed again later.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anima.cli.region_flags import add_region_args
from anima.errors import AnimaError
from anima.recipe import HIRES_UPSCALERS, SETTINGS, TILED_VAE_MODES
from anima.recipe.model_defaults import TURBO_DEFAULTS
from anima.sampling.names import GUIDANCES

# --preset name -> recipe defaults (core fields and flat settings; each overridden by an explicit
# flag). Turbo: the model card's (`anima.recipe.model_defaults`), the same the web UI applies.
PRESETS: dict[str, Mapping[str, Any]] = {"turbo": TURBO_DEFAULTS}


def add_workflow_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workflows")
    g.add_argument("--preset", choices=sorted(PRESETS), help="turbo: CFG 1, 10 steps, er_sde, NAG negative")
    g.add_argument("--batch-count", type=int, default=1, help="N batches; seed +1 per batch")
    # inpainting
    g.add_argument("--mask", type=Path, help="inpaint where this image is white")
    g.add_argument("--mask-blur", type=int, help="feather the mask by this many pixels (default 4)")
    g.add_argument("--mask-grow", type=int, help="grow (or, negative, shrink) the mask by N pixels")
    g.add_argument("--only-masked", action="store_true", help="repaint a crop around the mask at full size")
    g.add_argument("--inpaint-padding", type=int, help="only-masked: pixels of context around the mask (32)")
    # guidance
    g.add_argument("--guidance", choices=GUIDANCES, help="guidance variant (default cfg)")
    g.add_argument("--cfg-rescale", type=float, help="rescale-cfg: blend factor phi in [0, 1] (0.7)")
    g.add_argument("--apg-eta", type=float, help="apg: weight of the parallel component (0)")
    g.add_argument("--apg-momentum", type=float, help="apg: momentum of the guidance average (0)")
    g.add_argument("--apg-norm-threshold", type=float, help="apg: cap on the guidance norm (0 = none)")
    g.add_argument("--cfg-zero-init-steps", type=int, help="cfg-zero-star: steps with zero velocity (0)")
    g.add_argument("--nag-scale", type=float, help="NAG strength; > 1 turns NAG on")
    g.add_argument("--nag-tau", type=float, help="NAG norm cap (2.5)")
    g.add_argument("--nag-alpha", type=float, help="NAG blend (0.25)")
    # variations
    g.add_argument("--variation-seed", type=int, help="seed of the noise to blend in")
    g.add_argument("--variation-strength", type=float, help="0 = the seed's image, 1 = the variation seed's")
    # hires fix
    g.add_argument("--hires-scale", type=float, help="hires fix: final size factor (passes of <= 1.75x)")
    g.add_argument(
        "--hires-upscaler", metavar="NAME",
        help=f"how to enlarge between passes: {', '.join(HIRES_UPSCALERS)}, or an upscaler model "
        "(a file in models/upscale_models/ or a path, e.g. 4x-AnimeSharp.pth)",
    )  # fmt: skip
    g.add_argument("--hires-steps", type=int, help="steps of each hires pass (default: --steps)")
    g.add_argument("--hires-denoise", type=float, help="strength of each hires pass in (0, 1] (0.5)")
    g.add_argument("--hires-sampler", help="sampler of the hires passes (default: --sampler)")
    g.add_argument("--hires-scheduler", help="scheduler of the hires passes (default: --scheduler)")
    g.add_argument("--hires-max-side", type=int, help="refuse a hires size over this many pixels (2048)")
    g.add_argument("--hires-max-step", type=float, help="largest enlargement of one pass (1.75)")
    g.add_argument("--tiled-vae", choices=TILED_VAE_MODES, help="tile the VAE: auto (by memory), on, off")
    add_region_args(p)
    # many images
    g.add_argument("--grid", nargs="+", metavar="AXIS=V1,V2", help="X/Y/Z grid: cfg=3,4 sampler=euler,er_sde")
    g.add_argument("--prompt-matrix", action="store_true", help="a|b|c: all combinations of b, c")
    g.add_argument("--wildcards-dir", type=Path, help="folder of NAME.txt files for __NAME__ in prompts")


# Flags whose destination is a flat setting (mask/init paths are sources, recorded with digests).
_SOURCES = ("init_image", "init_image_hash", "mask", "mask_hash", "reference_image", "reference_image_hash")
_SETTING_FLAGS = tuple(s for s in SETTINGS if s not in _SOURCES)


def workflow_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The flat settings the flags set explicitly (typed by argparse; checked by the recipe)."""
    changes = {name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "fp16_accumulation", False):
        changes["fp16_accumulation"] = True
    else:
        changes.pop("fp16_accumulation", None)  # store_true: absent means "as recorded"
    changes.pop("prompt_matrix", None)  # a planning flag, not a setting of each cell
    if getattr(args, "only_masked", False):
        changes["inpaint_area"] = "only masked"
    return changes


def preset(name: str | None) -> dict[str, Any]:
    if name is None:
        return {}
    if name not in PRESETS:
        raise AnimaError(
            f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}", setting="preset"
        )
    return dict(PRESETS[name])


def check_counts(args: argparse.Namespace) -> None:
    if getattr(args, "grid", None) and getattr(args, "prompt_matrix", False):
        raise AnimaError("use either --grid or --prompt-matrix, not both")
    if not isinstance(args.batch_count, int) or not 1 <= args.batch_count <= 10_000:
        raise AnimaError(f"--batch-count must be an integer in 1..10000, got {args.batch_count!r}")
    if args.only_masked and args.mask is None and getattr(args, "from_png", None) is None:
        raise AnimaError("--only-masked needs --mask")
