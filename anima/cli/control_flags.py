"""The ``anima generate`` control flags: repeatable groups, one ControlNet-LLLite unit each.

    --control-model FILE|NAME --control IMAGE [--control-mask MASK] [--control-strength S]
        [--control-start A] [--control-end B]

Each ``--control-model`` starts a unit; the other flags set the latest one (a flag before any
``--control-model`` is an error). Units apply in the order given. With ``--from-png`` and no control
flags, the PNG's units run again from their recorded files (checked against their digests); any
control flag replaces them all. Everything is checked before a model loads: the patch is found
(a path, or a name in a models folder's ``model_patches/``), fits the DiT (depth and width, from the
headers), the images load, and a mask goes only to a 4-channel patch, at the control image's size.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from anima.errors import AnimaError

_FIELDS = {  # flag dest -> ControlUnit field
    "control_image": "image", "control_mask": "mask", "control_strength": "strength",
    "control_start": "start", "control_end": "end",
}  # fmt: skip


class _ControlFlag(argparse.Action):
    """Collect control flags in the order given: [("control_model", v), ("control_image", v), ...]."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        seen = list(getattr(namespace, "control_flags", None) or [])
        seen.append((self.dest, values, option_string))
        namespace.control_flags = seen


def add_control_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control (ControlNet-LLLite; repeat the group for several units)")
    p.set_defaults(control_flags=[])
    g.add_argument("--control-model", dest="control_model", action=_ControlFlag, metavar="FILE|NAME",
                   help="start a control unit with this patch (a file, or a name in model_patches/)")
    g.add_argument("--control", dest="control_image", action=_ControlFlag, type=Path, metavar="IMAGE",
                   help="the control image of the latest unit (lineart, depth map, ...)")
    g.add_argument("--control-mask", dest="control_mask", action=_ControlFlag, type=Path, metavar="MASK",
                   help="inpainting patches: white = repaint (same size as the control image)")
    g.add_argument("--control-strength", dest="control_strength", action=_ControlFlag, type=float,
                   metavar="S", help="strength of the latest unit in [-10, 10] (1)")
    g.add_argument("--control-start", dest="control_start", action=_ControlFlag, type=float, metavar="A",
                   help="first fraction of the run the unit acts in (0)")
    g.add_argument("--control-end", dest="control_end", action=_ControlFlag, type=float, metavar="B",
                   help="last fraction of the run the unit acts in (1)")  # fmt: skip


def units_from_flags(flags: Sequence[tuple[str, Any, str]]) -> list[dict[str, Any]]:
    """The flags as unit fields; a flag before any --control-model is one line."""
    units: list[dict[str, Any]] = []
    for dest, value, option in flags:
        if dest == "control_model":
            units.append({"model": str(value)})
            continue
        if not units:
            raise AnimaError(f"{option} comes before any --control-model (which starts each unit)")
        units[-1][_FIELDS[dest]] = value
    return units


def control_units(args: argparse.Namespace, recorded: Sequence = ()) -> tuple:
    """The recipe's control units: from the flags (images made absolute, digests taken), else the
    recorded ones (files checked again when the run loads them)."""
    from anima.recipe import ControlUnit
    from anima.workflows.init_image import file_digest

    flags = getattr(args, "control_flags", None) or []
    if not flags:
        return tuple(recorded)
    units = []
    for i, fields in enumerate(units_from_flags(flags)):
        if "image" not in fields:
            raise AnimaError(f"control {i} ({fields['model']}) needs a control image: --control IMAGE")
        for what in ("image", "mask"):
            if what in fields:
                path = Path(fields[what])
                if not path.is_file():
                    flag = "--control" if what == "image" else "--control-mask"
                    raise AnimaError(f"{flag} {path}: file not found")
                fields[f"{what}_hash"] = file_digest(path)
                fields[what] = str(path.resolve())
        units.append(ControlUnit(**fields))
    return tuple(units)


def control_resolver(args: argparse.Namespace) -> Callable[[str], Path]:
    """Names as the CLI user expects: a path, else a file stem in the models folder's or a ComfyUI
    install's model_patches/ (the places `anima models` searches), searched once, lazily."""
    from anima.cli.model_selection import search_places
    from anima.weights.discovery import resolve_patch, scan

    scans: list = []

    def resolve(name: str) -> Path:
        for candidate in (Path(name), Path(f"{name}.safetensors")):
            if candidate.is_file():
                return candidate
        if not scans:
            places = search_places(args)
            scans.extend(scan(places["models_dir"], places["comfyui_dirs"], None))
        return resolve_patch(name, scans)

    return resolve


def dit_config_of(files) -> Any:
    """The DiT config from the model set's header (None for a diffusers folder: checked at load)."""
    from anima.weights.lllite import dit_config_of as from_file

    return None if files is None or files.diffusers is not None else from_file(files.dit)


def check_controls(units: Sequence, resolve: Callable[[str], Path], files) -> list[str]:
    """Every unit's patch and images, before any model loads (strict: masks must fit)."""
    from anima.pipeline.controls import check_units

    return check_units(units, resolve, dit_config_of(files), strict=True)


# --------------------------------------------------------------------- anima preprocess
def add_preprocess_args(p: argparse.ArgumentParser) -> None:
    from anima.workflows.control_preprocess import PREPROCESSORS

    p.add_argument("kind", choices=PREPROCESSORS, help="what to make: canny (white edges on black), "
                   "lineart / scribble (dark lines on white), invert, threshold, grayscale")
    p.add_argument("image", type=Path, help="the input picture")
    p.add_argument("--output", "-o", type=Path, required=True, help="OUT.png, the control image")
    p.add_argument("--low", type=float, default=0.1, help="Canny low threshold in [0, 1] (0.1)")
    p.add_argument("--high", type=float, default=0.2, help="Canny high threshold in [0, 1] (0.2)")
    p.add_argument("--threshold", type=float, default=0.5, help="threshold: luminance cut (0.5)")


def run_preprocess(args: argparse.Namespace) -> int:
    """``anima preprocess KIND IMAGE -o OUT.png``: a control image for a patch (see
    `anima.workflows.control_preprocess` for which patch wants which)."""
    from anima.imageio import atomic_write, to_uint8
    from anima.workflows.control_preprocess import preprocess
    from anima.workflows.init_image import load_rgb

    if args.output.suffix.lower() != ".png":
        raise AnimaError(f"--output must end in .png, got '{args.output}'")
    out = preprocess(load_rgb(args.image), args.kind, low=args.low, high=args.high, threshold=args.threshold)
    from PIL import Image

    image = Image.fromarray(to_uint8(out)[0])
    atomic_write(args.output, lambda fh: image.save(fh, format="PNG"))
    print(args.output)
    return 0
