"""The pipeline's control hook: recipe control units -> patch files -> applied to the DiT for one run.

    with applied_controls(pipe, recipe) as run:      # resolve, load, install; removed on exit
        ... sample, every model call inside run.calling(x, sigma) ...

Patch names are resolved by the pipeline's `RunOptions.control_resolver` (name -> path; the CLI
gives one that searches ``model_patches/`` folders, the server one that looks only inside its
own); without one a name must be a path. Each patch is checked against the loaded DiT (depth and
width) and loaded in the DiT's compute dtype on its device. Images come from the units' recorded
paths (digests checked) unless the caller hands them over (`ControlImage`, the Python API and the
ComfyUI-graph path). The sigma window of each unit is its start/end under the recipe's shift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from anima.errors import AnimaError
from anima.recipe import ControlUnit, Recipe
from anima.weights.lllite import patch_config, patch_hash
from anima.workflows.control import ControlPatch, ControlRun, window
from anima.workflows.control_sources import ControlImage, check_control_image, unit_image
from anima.workflows.init_image import file_digest

Resolver = Callable[[str], Path]


def path_resolver(name: str) -> Path:
    """Patch names as paths (``x`` may omit ``.safetensors``)."""
    for candidate in (Path(name), Path(f"{name}.safetensors")):
        if candidate.is_file():
            return candidate
    raise AnimaError(
        f"control model {name!r} not found (give a path, or put it in the models folder's model_patches/)",
        setting="control_model",
    )


def recorded_controls(units: Sequence[ControlUnit], resolve: Resolver | None) -> tuple[ControlUnit, ...]:
    """The units as a run records them: patch hashes, absolute image paths and their digests filled in."""
    out = []
    for unit in units:
        changes = {}
        if not unit.model_hash:
            changes["model_hash"] = patch_hash((resolve or path_resolver)(unit.model))
        for what in ("image", "mask"):
            path = getattr(unit, what)
            if path and not getattr(unit, f"{what}_hash"):
                changes[what] = str(Path(path).resolve())
                changes[f"{what}_hash"] = file_digest(path)
        out.append(unit.with_(**changes) if changes else unit)
    return tuple(out)


def check_units(
    units: Sequence[ControlUnit], resolve: Resolver | None, dit=None,
    images: Sequence[ControlImage] | None = None, *, strict: bool = True,
) -> list[str]:  # fmt: skip
    """Every unit's patch found and fitting `dit` (a `DiTConfig`, or None), its images loadable and
    fitting the patch; -> notes. Header reads and small images only: run before any model loads."""
    notes = []
    for i, unit in enumerate(units):
        path = (resolve or path_resolver)(unit.model)
        cfg = patch_config(path, dit)
        ci = images[i] if images is not None else unit_image(unit, i)
        notes += check_control_image(ci, cfg.cond_in_channels, i, strict=strict)
    return notes


@contextmanager
def applied_controls(
    pipe, recipe: Recipe, images: Sequence[ControlImage] | None = None, *, strict: bool = False
) -> Iterator[tuple[ControlRun | None, list[str]]]:
    """Load and install `recipe.controls` on `pipe.dit` for the block; yields (the run, notes), or
    (None, []) without controls. `images` (one per unit) replace the images the units name."""
    units = recipe.controls
    if not units:
        yield None, []
        return
    if images is not None and len(images) != len(units):
        raise AnimaError(f"{len(units)} control units, {len(images)} control images", setting="control_image")
    resolve = pipe.options.control_resolver or path_resolver
    patches, notes = [], []
    for i, unit in enumerate(units):
        lllite = pipe.control_patch(resolve(unit.model))
        ci = images[i] if images is not None else unit_image(unit, i, recipe.comfy.mask_channel)
        notes += check_control_image(ci, lllite.cfg.cond_in_channels, i, strict=strict)
        mask = ci.mask if lllite.cfg.cond_in_channels == 4 else None
        start, end = window(unit.start, unit.end, recipe.shift)
        patches.append(ControlPatch(lllite, ci.image.float(), mask, unit.strength, start, end))
    run = ControlRun(patches)
    with run.installed(pipe.dit):
        yield run, notes
