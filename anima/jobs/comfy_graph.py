"""Running a ComfyUI graph: its plan (`anima.interop.comfyui.plan`) -> files found -> images.

`prepare_graph` does everything that can fail before a model loads: it finds every model file,
LoRA and picture the jobs name (one line for the first one missing), checks their kinds from
their headers, applies the command's overrides, records the input files' digests in the recipes
and loads the inputs. `render_graph` then runs the jobs, loading each distinct model set once.

Output names (`graph_output_paths`): a graph with one output writes OUT.png (a batch: OUT_0.png,
OUT_1.png, ...); with several, each output node's images are named after it, OUT_<node id>.png
(``:`` of a subgraph id written as ``-``), and OUT_<node id>_0.png, ... for a batch.

Control pictures the graph computes (the plan's `Derived`: Canny, ImageInvert, Painter, resizes)
are made by `derive_controls` once the output name is known, before any model loads, and written
beside the output as OUT.control<i>.png and OUT.control<i>-mask.png (OUT_<node id>.control<i>.png
with several outputs), like A1111's saved "detected maps": the recorded units name those files, so
``anima generate --from-png`` of the output runs again from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.imageio import atomic_write, output_paths
from anima.interop.comfyui import values as V
from anima.interop.comfyui.plan import DERIVED, GraphJob, GraphPlan
from anima.jobs import comfy_pictures
from anima.jobs.comfy_files import GraphPlaces, model_file
from anima.lora.file import check_lora
from anima.recipe import Recipe
from anima.weights.checkpoint import is_checkpoint
from anima.weights.model_files import ModelSet, header_shapes, inspect_file
from anima.workflows.init_image import file_digest
from anima.workflows.sources import Inputs, recipe_inputs

SOURCE = "comfyui graph"


@dataclass(frozen=True)
class GraphRun:
    """One job, ready: the recipe to run (inputs recorded), its model files and inputs."""

    job: GraphJob
    recipe: Recipe
    models: ModelSet
    loras: Mapping[str, Path]
    inputs: Inputs


def _model_set(job: GraphJob, places: GraphPlaces, tokenizers: tuple[Path | None, Path | None]) -> ModelSet:
    f = job.files
    paths = {}
    for slot, kind, name, from_ckpt in (
        ("dit", "unet", f.unet, f.unet_from_checkpoint),
        ("text_encoder", "clip", f.clip, f.clip_from_checkpoint),
        ("vae", "vae", f.vae, f.vae_from_checkpoint),
    ):
        path = model_file("checkpoint" if from_ckpt else kind, name, places)
        if from_ckpt:
            if not is_checkpoint(header_shapes(path)):
                raise AnimaError(
                    f"{path} is not an Anima checkpoint (a DiT, text encoder and VAE under "
                    "model.diffusion_model., cond_stage_model. and first_stage_model.)"
                )
        elif (info := inspect_file(path)).kind != slot:
            raise AnimaError(f"{path} is {info.description}, not what a {kind} loader needs")
        paths[slot] = path
    q, t = tokenizers
    if q is None or t is None:
        raise AnimaError(
            "no tokenizers found: pass --tokenizer-dir (a folder with qwen/ and t5/), point --comfyui "
            "at a ComfyUI install, or run `anima models download --tokenizers-only`"
        )
    return ModelSet(Path(f.unet).stem, paths["dit"], paths["text_encoder"], paths["vae"], q, t, SOURCE)


def _controls_found(recipe: Recipe, places: GraphPlaces) -> Recipe:
    """ControlNet-LLLite units (``Recipe.controls``) with their patch files found and
    their pictures' digests recorded; a recipe without units is returned as it is."""
    units = recipe.controls
    if not units:
        return recipe
    found = []
    for u in units:
        changes = {"model": str(model_file("model_patch", u.model, places))}
        if u.image != DERIVED:  # a derived one gets its digest once made (derive_controls)
            changes["image_hash"] = file_digest(u.image)
        if u.mask and u.mask != DERIVED:
            changes["mask_hash"] = file_digest(u.mask)
        found.append(replace(u, **changes))
    return recipe.with_(controls=tuple(found))


def prepare_graph(
    plan: GraphPlan,
    places: GraphPlaces,
    tokenizers: tuple[Path | None, Path | None],
    overrides: Mapping[str, Any] | None = None,
) -> list[GraphRun]:
    """Every job checked and ready to render (nothing loaded but headers and input pictures)."""
    runs = []
    for job in plan.jobs:
        recipe = job.recipe
        if overrides:
            try:
                recipe = recipe.with_(**overrides).validate()
            except AnimaError as exc:
                raise AnimaError(f"output node {job.output}: {exc}", setting=exc.setting) from None
        recipe = _controls_found(recipe, places)
        for d in job.derived:
            if isinstance(d.value, V.Picture):
                comfy_pictures.check_available(d.value)
        src = recipe.sources
        if src.init_image:
            recipe = recipe.with_(init_image_hash=file_digest(src.init_image))
        if src.mask:
            recipe = recipe.with_(mask_hash=file_digest(src.mask))
        models = _model_set(job, places, tokenizers)
        names = [n for n, _ in recipe.loras] + [n for n, _ in recipe.comfy.clip_loras]
        loras = {n: check_lora(model_file("lora", n, places)) for n in names}
        runs.append(GraphRun(job, recipe, models, loras, recipe_inputs(recipe)))
    return runs


def _base(out: Path, runs: Sequence[GraphRun], run: GraphRun) -> Path:
    """OUT without .png for a graph with one output, OUT_<node id> with several."""
    base = out.with_suffix("") if out.suffix.lower() == ".png" else out
    return base if len(runs) == 1 else base.with_name(f"{base.name}_{run.job.output.replace(':', '-')}")


def graph_output_paths(out: Path, runs: Sequence[GraphRun]) -> list[list[Path]]:
    """Per run, the files its images go to (see the module docstring)."""
    if len(runs) == 1:
        return [output_paths(out, runs[0].recipe.batch_size)]
    return [output_paths(_base(out, runs, run).with_suffix(".png"), run.recipe.batch_size) for run in runs]


def derive_controls(runs: Sequence[GraphRun], out: Path) -> list[GraphRun]:
    """The runs with their derived control pictures made, written beside `out` (see the module
    docstring) and recorded in their units (absolute path and digest). Every picture is computed
    before the first is written, so a bad input writes nothing; each file is written atomically."""
    made: list[tuple[int, int, str, Path, bytes]] = []
    for r, run in enumerate(runs):
        for d in run.job.derived:
            tail = "" if d.what == "image" else "-mask"
            path = _base(out, runs, run).with_name(f"{_base(out, runs, run).name}.control{d.unit}{tail}.png")
            made.append((r, d.unit, d.what, path, comfy_pictures.derived_png(d.value)))
    if not made:
        return list(runs)
    done = list(runs)
    for r, unit, what, path, data in made:
        atomic_write(path, lambda fh, data=data: fh.write(data))
        recipe = done[r].recipe
        units = list(recipe.controls)
        units[unit] = units[unit].with_(**{what: str(path.resolve()), f"{what}_hash": file_digest(path)})
        done[r] = replace(done[r], recipe=recipe.with_(controls=tuple(units)))
    return done


PipelineFor = Callable[[ModelSet], Any]  # model set -> a loaded Pipeline


def render_graph(
    runs: Sequence[GraphRun],
    pipeline_for: PipelineFor,
    progress=None,
    on_note: Callable[[str], None] | None = None,
) -> list[list[tuple[Any, Recipe]]]:
    """Per run, its images as (uint8 [H, W, 3], recorded recipe). Pipelines are made per distinct
    model set, in the order the runs need them."""
    made: dict[ModelSet, Any] = {}
    out = []
    for run in runs:
        if run.models not in made:
            made[run.models] = pipeline_for(run.models)
        pipe = made[run.models]
        src = run.inputs
        result = pipe.generate(run.recipe, init_image=src.init_image, mask=src.mask, progress=progress)
        for note in result.notes:
            if on_note is not None:
                on_note(note)
        out.append(list(zip(result.uint8(), result.recipes, strict=True)))
    return out
