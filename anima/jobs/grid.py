"""X/Y/Z grids: axes -> cell recipes -> one labelled contact sheet, with every cell's recipe inside.

An axis is ``name=v1,v2,...`` (values CSV-quoted when they hold commas: ``prompt="red, hair",blue``).
The first axis runs along X (columns), the second along Y (rows), the third along Z (sheets
stacked vertically). ``prompt`` and ``negative_prompt`` axes are search/replace as in A1111's
"Prompt S/R": the first value must occur in the prompt and each value replaces it.

The sheet PNG's ``anima_recipe`` is the base recipe with the axes under ``Grid X/Y/Z``; its
``anima_grid`` chunk holds every cell's full recipe and the labels, so ``--from-png sheet.png``
re-renders exactly the same cells without re-parsing anything.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anima.errors import AnimaError
from anima.recipe.settings import Workflow

GRID_KEY = "anima_grid"
GRID_FORMAT = "anima-grid/1"
AXIS_KEYS = ("Grid X", "Grid Y", "Grid Z")
MAX_CELLS = 1024


def _recipe_field(name: str, kind: Callable[[str], Any]) -> Callable:
    return lambda recipe, text: recipe.with_(**{name: kind(text)})


def _workflow_field(name: str, kind: Callable[[str], Any]) -> Callable:
    return lambda recipe, text: Workflow.from_recipe(recipe).with_(**{name: kind(text)}).apply(recipe)


def _size(recipe, text: str):
    from anima.recipe import parse_size

    width, height = parse_size(text)
    return recipe.with_(width=width, height=height)


def _search_replace(field: str) -> Callable:
    def apply(recipe, text: str, search: str):
        current = getattr(recipe, field)
        if search not in current:
            raise AnimaError(f"grid axis {field}: {search!r} does not occur in the {field.replace('_', ' ')}")
        return recipe.with_(**{field: current.replace(search, text)})

    return apply


def _name(text: str) -> str:
    return text.strip().lower().replace(" ", "_")


# axis name -> apply(recipe, value_text) -> recipe
AXES: dict[str, Callable] = {
    "seed": _recipe_field("seed", int),
    "steps": _recipe_field("steps", int),
    "cfg": _recipe_field("cfg", float),
    "sampler": _recipe_field("sampler", _name),
    "scheduler": _recipe_field("scheduler", _name),
    "shift": _recipe_field("shift", float),
    "denoise": _recipe_field("denoise", float),
    "size": _size,
    "guidance": _workflow_field("guidance", str.strip),
    "cfg_rescale": _workflow_field("cfg_rescale", float),
    "apg_eta": _workflow_field("apg_eta", float),
    "apg_momentum": _workflow_field("apg_momentum", float),
    "nag_scale": _workflow_field("nag_scale", float),
    "nag_tau": _workflow_field("nag_tau", float),
    "nag_alpha": _workflow_field("nag_alpha", float),
    "variation_seed": _workflow_field("variation_seed", int),
    "variation_strength": _workflow_field("variation_strength", float),
    "hires_scale": _workflow_field("hires_scale", float),
    "hires_steps": _workflow_field("hires_steps", int),
    "hires_denoise": _workflow_field("hires_denoise", float),
    "hires_upscaler": _workflow_field("hires_upscaler", str.strip),
    "hires_sampler": _workflow_field("hires_sampler", _name),
}
SEARCH_REPLACE = {"prompt": _search_replace("prompt"), "negative_prompt": _search_replace("negative_prompt")}


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[str, ...]

    def label(self, value: str) -> str:
        return f"{self.name}: {value}"

    def apply(self, recipe, value: str):
        try:
            if self.name in SEARCH_REPLACE:
                return SEARCH_REPLACE[self.name](recipe, value, self.values[0])
            return AXES[self.name](recipe, value)
        except ValueError:
            raise AnimaError(f"grid axis {self.name}: cannot use value {value!r}") from None

    def spec(self) -> str:
        return f"{self.name}=" + ",".join(_csv_value(v) for v in self.values)


def _csv_value(v: str) -> str:
    return f'"{v}"' if any(c in v for c in ',"') else v


def parse_axis(text: str) -> Axis:
    """``name=v1,v2`` -> Axis; unknown names and empty value lists are one-line errors."""
    name, sep, values = text.partition("=")
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if not sep or not key:
        raise AnimaError(f"grid axis {text!r}: write NAME=VALUE1,VALUE2 (for example cfg=3,4,5)")
    if key not in AXES and key not in SEARCH_REPLACE:
        known = ", ".join(sorted([*AXES, *SEARCH_REPLACE]))
        raise AnimaError(f"unknown grid axis {name.strip()!r}; choose from: {known}")
    items = [v.strip() for v in next(csv.reader([values], skipinitialspace=True), []) if v.strip()]
    if not items:
        raise AnimaError(f"grid axis {key} has no values")
    return Axis(key, tuple(items))


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
        from anima.recipe import Recipe

        if not isinstance(data, dict) or data.get("format") != GRID_FORMAT:
            raise AnimaError(f"not an anima grid (expected format {GRID_FORMAT!r})")
        try:
            plan = cls(
                tuple(Recipe.from_dict(c) for c in data["cells"]),
                tuple(map(str, data["x_labels"])),
                tuple(map(str, data["y_labels"])),
                tuple(map(str, data["z_labels"])),
            )
        except (KeyError, TypeError):
            raise AnimaError("the grid metadata is incomplete") from None
        if len(plan.cells) != math.prod(plan.shape):
            raise AnimaError("the grid metadata does not hold one recipe per cell")
        return plan


def plan_grid(base, axes: Sequence[Axis]) -> GridPlan:
    """Every combination of the axes' values applied to `base` (X fastest)."""
    if not 1 <= len(axes) <= 3:
        raise AnimaError(f"a grid has 1 to 3 axes (X, Y, Z), got {len(axes)}")
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise AnimaError(f"grid axes repeat: {', '.join(names)}")
    x, y, z = (list(axes) + [None, None])[:3]
    count = math.prod(len(a.values) for a in axes)
    if count > MAX_CELLS:
        raise AnimaError(f"the grid has {count} cells; at most {MAX_CELLS}")
    cells = []
    for zv in z.values if z else [None]:
        for yv in y.values if y else [None]:
            for xv in x.values:
                r = base
                for axis, value in ((z, zv), (y, yv), (x, xv)):
                    if axis is not None:
                        r = axis.apply(r, value)
                cells.append(r)
    labels = [tuple(a.label(v) for a in (ax,) for v in a.values) if ax else () for ax in (x, y, z)]
    return GridPlan(tuple(cells), *labels)


def sheet_recipe(base, axes: Sequence[Axis]):
    """The recipe written on the sheet: the base plus ``Grid X/Y/Z`` = the axis specs."""
    extra = dict(base.extra)
    for key, axis in zip(AXIS_KEYS, axes, strict=False):
        extra[key] = axis.spec()
    return base.with_(extra=tuple(extra.items()))
