"""What one ``anima generate`` renders: batches of images, or a contact sheet of cells.

`plan_job` turns the checked recipe (and the grid / matrix / batch flags, or a sheet PNG's stored
cells) into a `Job` before any model is loaded, so every cell is validated up front. `render` runs
it on a pipeline and returns the files to write. Wildcards are expanded per batch and per cell,
each with that image's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.jobs.grid import GRID_KEY, GridPlan, parse_axis, plan_grid, sheet_recipe
from anima.jobs.wildcards import expand_recipe
from anima.recipe.settings import Workflow


@dataclass(frozen=True)
class Job:
    """`recipes`: one per batch (images) or one per cell (sheet, with `plan` and `sheet_recipe`)."""

    recipes: tuple
    plan: GridPlan | None = None
    sheet_recipe: Any = None

    @property
    def is_sheet(self) -> bool:
        return self.plan is not None


def _check_cell(recipe, samplers, schedulers) -> None:
    from anima.workflows.hires import plan_passes

    recipe.validate(samplers, schedulers)
    wf = Workflow.from_recipe(recipe).validate(samplers, schedulers)
    plan_passes(
        recipe.width, recipe.height, wf.hires_scale, max_step=wf.hires_max_step, max_side=wf.hires_max_side
    )


def plan_job(
    recipe,
    *,
    grid: list[str] | None = None,
    prompt_matrix: bool = False,
    batch_count: int = 1,
    wildcards_dir: Path | None = None,
    stored_grid: dict | None = None,
) -> Job:
    """The job for these settings; every recipe in it is validated."""
    from anima.jobs.batches import batch_recipes
    from anima.jobs.prompt_matrix import plan_matrix
    from anima.jobs.prompt_matrix import sheet_recipe as matrix_sheet_recipe
    from anima.sampling import samplers, schedules

    names = (samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
    sheet = bool(grid) or prompt_matrix or stored_grid is not None
    if sheet and (batch_count != 1 or recipe.batch_size != 1):
        raise AnimaError("a grid or prompt matrix draws one image per cell; drop --batch-size/--batch-count")
    if grid and prompt_matrix:
        raise AnimaError("use either --grid or --prompt-matrix, not both")
    if stored_grid is not None and not (grid or prompt_matrix):
        plan = GridPlan.from_json(stored_grid)
        job = Job(plan.cells, plan, recipe)
    elif grid:
        axes = [parse_axis(a) for a in grid]
        plan = plan_grid(recipe, axes)
        cells = tuple(expand_recipe(c, wildcards_dir) for c in plan.cells)
        plan = GridPlan(cells, plan.x_labels, plan.y_labels, plan.z_labels)
        job = Job(cells, plan, sheet_recipe(recipe, axes))
    elif prompt_matrix:
        plan = plan_matrix(recipe)
        cells = tuple(expand_recipe(c, wildcards_dir) for c in plan.cells)
        plan = GridPlan(cells, plan.x_labels, plan.y_labels, plan.z_labels)
        job = Job(cells, plan, matrix_sheet_recipe(recipe))
    else:
        job = Job(tuple(expand_recipe(r, wildcards_dir) for r in batch_recipes(recipe, batch_count)))
    for r in job.recipes:
        _check_cell(r, *names)
    return job


Sources = Callable[[Any], Any]  # recipe -> anima.workflows.sources.Sources


def render(
    pipe, job: Job, sources: Sources, progress=None, on_note: Callable[[str], None] | None = None
) -> list[tuple[Any, Any, dict | None]]:
    """Run the job: -> [(uint8 [H, W, 3], recipe to record, extra PNG JSON chunks or None)].

    `sources(recipe)` gives the init image and mask of a recipe; `on_note` hears what the workflows
    decided (hires plans, crops).
    """
    outputs: list[tuple[Any, Any, dict | None]] = []
    cells = []
    first = None
    for recipe in job.recipes:
        src = sources(recipe)
        result = pipe.generate(recipe, init_image=src.init_image, mask=src.mask, progress=progress)
        first = first or result.recipes[0]
        for note in result.notes:
            if on_note is not None:
                on_note(note)
        images = result.uint8()
        if job.is_sheet:
            cells.append((images[0], result.recipes[0]))
            continue
        for i, img in enumerate(images):
            extra = {"batch_index": i} if recipe.batch_size > 1 else None
            outputs.append((img, result.recipes[i], extra))
    if job.is_sheet:
        from anima.jobs.contact_sheet import render_sheet

        plan = job.plan
        sheet = render_sheet([c[0] for c in cells], plan.x_labels, plan.y_labels, plan.z_labels)
        made = job.sheet_recipe.with_(dtype=first.dtype, model=first.model, model_hash=first.model_hash)
        # Record the recipes the cells actually ran with (model, hash and dtype filled in).
        ran = GridPlan(tuple(c[1] for c in cells), plan.x_labels, plan.y_labels, plan.z_labels)
        outputs.append((sheet, made, {GRID_KEY: ran.to_json()}))
    return outputs
