"""ComfyUI graphs in the native API: ``POST /anima/v1/jobs`` with ``{"graph": {...}}``.

The graph is read and planned as the CLI plans it (`anima.interop.comfyui`); its names are then
looked up the server's way: the DiT by its file stem among the served models, LoRAs by stem inside
the LoRA folders (never paths). A served model brings its own text encoder and VAE: the graph's
names for them are noted when they differ. What the server does not take from a graph yet is
refused in one line: several outputs (one job makes one output's images), LoadImage pictures
(send ``init_image`` with a recipe instead) and control pictures the graph computes.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from anima.errors import AnimaError
from anima.interop.comfyui.graph import Graph
from anima.interop.comfyui.plan import plan_graph
from anima.interop.comfyui.read import load_graph
from anima.recipe import Recipe


def _no_pictures(name: str) -> tuple[int, int]:
    raise AnimaError(
        f"the graph loads the picture {name!r}; the server takes graphs without LoadImage "
        "(send init_image with a recipe for img2img)"
    )


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


def graph_recipe(graph: dict[str, Any] | Graph, service) -> tuple[Recipe, list[str]]:
    """(the recipe of the graph's one output, notes); `graph` as JSON data or already read (a PNG's)."""
    graph = graph if isinstance(graph, Graph) else load_graph(graph, "graph")
    plan = plan_graph(graph, _no_pictures, _no_pictures)
    if len(plan.jobs) != 1:
        outputs = ", ".join(j.output for j in plan.jobs)
        raise AnimaError(f"the graph has {len(plan.jobs)} outputs ({outputs}); a job runs a graph with one")
    (job,) = plan.jobs
    if job.derived:  # a Painter canvas needs no file, but its pixels are made by the CLI's runner only
        raise AnimaError("the graph computes a control picture (Painter, Canny, ...); the server takes "
                         "control images as files (send controls with a recipe)")  # fmt: skip
    model = service.check_model(_stem(job.files.unet))
    served = next((m for m in service.models() if m.name == model), None)
    notes = list(plan.notes)
    if served is not None and Path(served.filename).name != PurePosixPath(job.files.unet).name:
        notes.append(f"the graph's {job.files.unet} is served as {model}")
    notes.append(f"model {model} runs with its own text encoder and VAE (the graph names {job.files.clip}, "
                 f"{job.files.vae})")  # fmt: skip
    r = job.recipe
    recipe = r.with_(
        model=model, loras=tuple((_stem(n), w) for n, w in r.loras),
        clip_loras=tuple((_stem(n), w) for n, w in r.comfy.clip_loras),
    ).validate(service.samplers(), service.schedulers())  # fmt: skip
    return recipe, notes
