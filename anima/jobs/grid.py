"""X/Y/Z grids: axes -> cell recipes -> one labelled contact sheet, with every cell's recipe inside.

An axis is ``name=v1,v2,...`` (values CSV-quoted when they hold commas: ``prompt="red, hair",blue``).
The first axis runs along X (columns), the second along Y (rows), the third along Z (sheets
stacked vertically). ``prompt`` and ``negative_prompt`` axes are search/replace as in A1111's
"Prompt S/R": the first value must occur in the prompt and each value replaces it.

The sheet PNG's recipe is the base recipe with the axes in `Recipe.grid`; its ``anima_grid`` chunk
holds every cell's full recipe and the labels, so a re-run from the sheet renders exactly the same
cells without re-parsing anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anima.errors import AnimaError
from anima.interop.legacy import recipe_from_data
from anima.recipe import GridAxis, Recipe, parse_size

GRID_KEY = "anima_grid"
GRID_FORMAT = "anima-grid/1"
MAX_CELLS = 1024


def _name(text: str) -> str:
    return text.strip().lower().replace(" ", "_")


# axis name -> how one value is read (the setting it changes has the same name; `size` sets both sides)
AXES: dict[str, Callable[[str], Any]] = {
    "seed": int,
    "steps": int,
    "cfg": float,
    "sampler": _name,
    "scheduler": _name,
    "shift": float,
    "denoise": float,
    "size": parse_size,
    "guidance": str.strip,
    "cfg_rescale": float,
    "apg_eta": float,
    "apg_momentum": float,
    "nag_scale": float,
    "nag_tau": float,
    "nag_alpha": float,
    "variation_seed": int,
    "variation_strength": float,
    "hires_scale": float,
    "hires_steps": int,
    "hires_denoise": float,
    "hires_upscaler": str.strip,
    "hires_sampler": _name,
}
SEARCH_REPLACE = ("prompt", "negative_prompt")


def check_axis(axis: GridAxis) -> GridAxis:
    if axis.name not in AXES and axis.name not in SEARCH_REPLACE:
        known = ", ".join(sorted([*AXES, *SEARCH_REPLACE]))
        raise AnimaError(f"unknown grid axis {axis.name!r}; choose from: {known}", setting="grid")
    return axis


def parse_axis(text: str) -> GridAxis:
    """``name=v1,v2`` -> a checked GridAxis; unknown names and empty value lists are one-line errors."""
    return check_axis(GridAxis.parse(text))


def label(axis: GridAxis, value: str) -> str:
    return f"{axis.name}: {value}"


def apply_axis(recipe: Recipe, axis: GridAxis, value: str) -> Recipe:
    """`recipe` with the axis' setting at `value`."""
    if axis.name in SEARCH_REPLACE:
        current = getattr(recipe, axis.name)
        search = axis.values[0]
        if search not in current:
            what = axis.name.replace("_", " ")
            raise AnimaError(
                f"grid axis {axis.name}: {search!r} does not occur in the {what}", setting="grid"
            )
        return recipe.with_(**{axis.name: current.replace(search, value)})
    try:
        parsed = AXES[axis.name](value)
    except ValueError:
        raise AnimaError(f"grid axis {axis.name}: cannot use value {value!r}", setting="grid") from None
    if axis.name == "size":
        return recipe.with_(width=parsed[0], height=parsed[1])
    return recipe.with_(**{axis.name: parsed})


@dataclass(frozen=True)
class GridPlan:
    """Cells in z, y, x order, and the labels of each axis (empty tuple = axis unused)."""

    cells: tuple
    x_labels: tuple[str, ...]
    y_labels: tuple[str, ...]
    z_labels: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return max(1, len(self.z_labels)), max(1, len(self.y_labels)), max(1, len(self.x_labels))

    def with_cells(self, cells: Sequence[Recipe]) -> GridPlan:
        return GridPlan(tuple(cells), self.x_labels, self.y_labels, self.z_labels)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": GRID_FORMAT,
            "x_labels": list(self.x_labels),
            "y_labels": list(self.y_labels),
            "z_labels": list(self.z_labels),
            "cells": [c.to_dict() for c in self.cells],
        }

    @classmethod
    def from_json(cls, data: Any) -> GridPlan:
        if not isinstance(data, dict) or data.get("format") != GRID_FORMAT:
            raise AnimaError(f"not an anima grid (expected format {GRID_FORMAT!r})")
        try:
            plan = cls(
                tuple(recipe_from_data(c) for c in data["cells"]),
                tuple(map(str, data["x_labels"])),
                tuple(map(str, data["y_labels"])),
                tuple(map(str, data["z_labels"])),
            )
        except (KeyError, TypeError):
            raise AnimaError("the grid metadata is incomplete") from None
        if len(plan.cells) != math.prod(plan.shape):
            raise AnimaError("the grid metadata does not hold one recipe per cell")
        return plan


def plan_grid(base: Recipe, axes: Sequence[GridAxis]) -> GridPlan:
    """Every combination of the axes' values applied to `base` (X fastest)."""
    if not 1 <= len(axes) <= 3:
        raise AnimaError(f"a grid has 1 to 3 axes (X, Y, Z), got {len(axes)}", setting="grid")
    names = [check_axis(a).name for a in axes]
    if len(set(names)) != len(names):
        raise AnimaError(f"grid axes repeat: {', '.join(names)}", setting="grid")
    x, y, z = (list(axes) + [None, None])[:3]
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_CELLS:
        raise AnimaError(f"the grid has {count} cells; at most {MAX_CELLS}", setting="grid")
    cells = []
    for zv in z.values if z else [None]:
        for yv in y.values if y else [None]:
            for xv in x.values:
                r = base
                for axis, value in ((z, zv), (y, yv), (x, xv)):
                    if axis is not None:
                        r = apply_axis(r, axis, value)
                cells.append(r)
    labels = [tuple(label(ax, v) for v in ax.values) if ax else () for ax in (x, y, z)]
    return GridPlan(tuple(cells), *labels)


def sheet_recipe(base: Recipe, axes: Sequence[GridAxis]) -> Recipe:
    """The recipe written on the sheet: the base plus the axes."""
    return base.with_(grid=tuple(axes))
