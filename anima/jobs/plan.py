"""What one ``anima generate`` renders: batches of images, or a contact sheet of cells.

`plan_job` turns the recipe (and the grid / matrix / batch settings, or a sheet PNG's stored
cells) into a `RenderPlan` before any model is loaded, so every cell is checked up front. `render`
runs it on a pipeline and returns the files to write. Wildcards are expanded per batch and per
cell, each with that image's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.jobs.batches import batch_recipes
from anima.jobs.contact_sheet import render_sheet
from anima.jobs.grid import GRID_KEY, GridPlan, plan_grid, sheet_recipe
from anima.jobs.prompt_matrix import plan_matrix
from anima.jobs.prompt_matrix import sheet_recipe as matrix_sheet_recipe
from anima.jobs.wildcards import expand_recipe
from anima.recipe import GridAxis, Recipe
from anima.workflows.hires import plan_passes
from anima.workflows.sources import Inputs


@dataclass(frozen=True)
class RenderPlan:
    """`recipes`: one per batch (images) or one per cell (a sheet, with `grid` and `sheet_recipe`)."""

    recipes: tuple[Recipe, ...]
    grid: GridPlan | None = None
    sheet_recipe: Recipe | None = None

    @property
    def is_sheet(self) -> bool:
        return self.grid is not None


def _check_cell(recipe: Recipe) -> None:
    recipe.validate()
    h = recipe.hires  # the pass plan refuses a final size over the hires limit
    plan_passes(recipe.width, recipe.height, h.scale, max_step=h.max_step, max_side=h.max_side)


def plan_job(
    recipe: Recipe,
    *,
    grid: Sequence[GridAxis] = (),
    prompt_matrix: bool = False,
    batch_count: int = 1,
    wildcards_dir: Path | None = None,
    stored_grid: dict | None = None,
) -> RenderPlan:
    """The render plan for these settings; every recipe in it is checked."""
    sheet = bool(grid) or prompt_matrix or stored_grid is not None
    if sheet and (batch_count != 1 or recipe.batch_size != 1):
        raise AnimaError(
            "a grid or prompt matrix draws one image per cell; use a batch size and count of 1",
            setting="grid",
        )
    if grid and prompt_matrix:
        raise AnimaError("use either a grid or a prompt matrix, not both", setting="grid")
    if stored_grid is not None and not (grid or prompt_matrix):
        cells = GridPlan.from_json(stored_grid)
        plan = RenderPlan(cells.cells, cells, recipe)
    elif grid:
        cells = plan_grid(recipe, grid)
        cells = cells.with_cells(expand_recipe(c, wildcards_dir) for c in cells.cells)
        plan = RenderPlan(cells.cells, cells, sheet_recipe(recipe, grid))
    elif prompt_matrix:
        cells = plan_matrix(recipe)
        cells = cells.with_cells(expand_recipe(c, wildcards_dir) for c in cells.cells)
        plan = RenderPlan(cells.cells, cells, matrix_sheet_recipe(recipe))
    else:
        plan = RenderPlan(tuple(expand_recipe(r, wildcards_dir) for r in batch_recipes(recipe, batch_count)))
    for r in plan.recipes:
        _check_cell(r)
    return plan


def sheet_plan(sheet: Recipe) -> RenderPlan:
    """The plan of a contact sheet's recipe (a recipe whose `grid` holds its axes): its cells."""
    if not sheet.grid:
        raise AnimaError("this recipe has no grid axes", setting="grid")
    return plan_job(sheet.with_(grid=()), grid=sheet.grid)


InputsFor = Callable[[Recipe], Inputs]  # recipe -> its init image and mask


def render(
    pipe, plan: RenderPlan, inputs: InputsFor, progress=None, on_note: Callable[[str], None] | None = None
) -> list[tuple[Any, Recipe, dict | None]]:
    """Run the plan: -> [(uint8 [H, W, 3], recipe to record, extra PNG JSON chunks or None)].

    `inputs(recipe)` gives the init image and mask of a recipe; `on_note` hears what the workflows
    decided (hires plans, crops).
    """
    outputs: list[tuple[Any, Recipe, dict | None]] = []
    cells = []
    for recipe in plan.recipes:
        src = inputs(recipe)
        result = pipe.generate(recipe, init_image=src.init_image, mask=src.mask, progress=progress)
        for note in result.notes:
            if on_note is not None:
                on_note(note)
        images = result.uint8()
        if plan.is_sheet:
            cells.append((images[0], result.recipes[0]))
            continue
        for i, img in enumerate(images):
            extra = {"batch_index": i} if recipe.batch_size > 1 else None
            outputs.append((img, result.recipes[i], extra))
    if plan.is_sheet:
        grid = plan.grid
        sheet = render_sheet([c[0] for c in cells], grid.x_labels, grid.y_labels, grid.z_labels)
        made = pipe.record(plan.sheet_recipe)  # stamped like the cells: model, hash, dtype, weights
        # Record the recipes the cells actually ran with.
        ran = grid.with_cells(c[1] for c in cells)
        outputs.append((sheet, made, {GRID_KEY: ran.to_json()}))
    return outputs
