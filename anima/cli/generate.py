"""`anima generate`: flags -> one Recipe -> Pipeline -> PNGs with metadata.

Order matters for "bad input loses nothing": every flag, the output path, the model files and the
input images are checked before any model is loaded or any file is written. The flags are read
into typed settings once (`workflow_settings`), the recipe is made (and so validated) once, and
the pipeline records it unchanged because the recipe already says which model, dtype and weights
run it.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from anima.errors import AnimaError


def add_generate_args(p: argparse.ArgumentParser) -> None:
    from anima.cli.comfy import add_graph_args
    from anima.cli.control_flags import add_control_args
    from anima.cli.perf_flags import add_perf_args
    from anima.cli.workflow_flags import add_workflow_args

    p.add_argument("prompt_pos", nargs="?", metavar="PROMPT", help="the prompt")
    p.add_argument("--prompt", "-p", help="the prompt (alternative to the positional argument)")
    p.add_argument("--negative-prompt", "-n", help="negative prompt (default: the model card's)")
    p.add_argument("--width", "-W", type=int)
    p.add_argument("--height", "-H", type=int)
    p.add_argument("--size", help="WxH or a preset name (square, portrait, landscape, tall, wide, ...)")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--sampler")
    p.add_argument("--scheduler")
    p.add_argument("--shift", type=float)
    p.add_argument("--seed", type=int, help="random when omitted (always printed and saved)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--init-image", type=Path, help="img2img: start from this image")
    p.add_argument("--denoise", type=float, help="img2img strength in (0, 1]")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--dtype", help="fp32, bf16, fp16 or auto (default: auto; with --from-png, the image's dtype)"
    )
    p.add_argument("--output", "-o", type=Path, help="OUT.png (a batch writes OUT_0.png, OUT_1.png, ...)")
    p.add_argument("--from-png", type=Path, help="regenerate from the recipe stored in a PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--lora", action="append", default=[], metavar="NAME[:STRENGTH]",
        help="apply a LoRA (repeatable; a path or a file name in loras/); also <lora:name:0.8> in the prompt",
    )  # fmt: skip
    p.add_argument("--merge-loras", action="store_true", help="merge LoRAs into the weights (faster steps)")
    add_workflow_args(p)
    add_control_args(p)
    add_perf_args(p)
    add_graph_args(p)


_RECIPE_FLAGS = (
    "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "shift", "seed",
    "batch_size", "denoise",
)  # fmt: skip


@dataclass(frozen=True)
class Request:
    """The command line read once: the recipe it asks for, and how to render it."""

    recipe: Any  # anima.recipe.Recipe
    plan: Any  # anima.jobs.plan.RenderPlan
    inputs: Any  # recipe -> anima.workflows.sources.Inputs
    device: str
    dtype: str  # the dtype name the run uses ("fp32", ...)
    control_resolver: Any = None  # control patch name -> file, as searched for this command line
    notes: tuple[str, ...] = ()


def recipe_from_args(args: argparse.Namespace, files=None, model_hash: str = ""):
    """The recipe a command line asks for (see `read_request`); no model needed for a look."""
    return read_request(args, files, model_hash).recipe


def read_request(args: argparse.Namespace, files, model_hash: str) -> Request:
    """Flags (and --from-png) -> the recipe and its render plan; nothing loaded, nothing written.

    Precedence: explicit flags > --preset > the model's own defaults (the demo's 64x64) > the PNG's
    recipe. A PNG made with this very model keeps its settings over the model defaults."""
    from anima.cli.control_flags import check_controls, control_resolver, control_units
    from anima.cli.model_selection import model_recipe_defaults
    from anima.cli.region_flags import check_region_inputs, region_values
    from anima.cli.upscale import check_hires_upscaler, upscaler_resolver
    from anima.cli.workflow_flags import check_counts, preset, workflow_settings
    from anima.imageio import read_png_text, read_recipe
    from anima.jobs.grid import GRID_KEY, parse_axis
    from anima.jobs.plan import plan_job
    from anima.recipe import DEFAULT_NEGATIVE, SETTINGS, Inpaint, Recipe, Sources, parse_size
    from anima.recipe.core import groups_of
    from anima.recipe.settings import GROUPS
    from anima.runtime.precision import SHORT_NAMES, resolve_dtype
    from anima.workflows.sources import plan_sources, recipe_inputs

    check_counts(args)
    base = read_recipe(args.from_png) if args.from_png else None
    prompt = args.prompt if args.prompt is not None else args.prompt_pos
    if args.prompt is not None and args.prompt_pos is not None:
        raise AnimaError("give the prompt either as an argument or with --prompt, not both")
    if base is None and prompt is None:
        raise AnimaError('no prompt: anima generate "1girl, ..." (or --from-png IMAGE)')
    defaults = model_recipe_defaults(files) if files is not None else {}
    same_model = base is not None and base.model_hash and base.model_hash == model_hash
    values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(base)} if base else {}
    if not same_model:
        values |= {k: v for k, v in defaults.items() if k != "dtype"}
    preset_values = preset(getattr(args, "preset", None))
    explicit = workflow_settings(args)  # the one reading of the workflow flags
    flat = {k: v for k, v in preset_values.items() if k in SETTINGS} | explicit
    values |= {k: v for k, v in preset_values.items() if k not in SETTINGS}
    values |= {k: getattr(args, k) for k in _RECIPE_FLAGS if getattr(args, k) is not None}
    if args.size:
        if args.width is not None or args.height is not None:
            raise AnimaError("give either --size or --width/--height, not both")
        values["width"], values["height"] = parse_size(args.size)
    if prompt is not None:
        values["prompt"] = prompt
    values |= region_values(args, base, prompt)  # --couple may rewrite the prompt
    if args.lora:
        from anima.lora.prompt import parse_lora_arg

        values["loras"] = tuple(parse_lora_arg(a) for a in args.lora)
    if base is None and args.seed is None:
        values["seed"] = secrets.randbits(32)
    if not values.get("negative_prompt", DEFAULT_NEGATIVE) and "nag_scale" in preset_values:
        if "nag_scale" not in explicit:
            flat.pop("nag_scale")  # NAG only serves a negative prompt: a preset's NAG goes with it
    # The settings' groups, made (and so checked) now, before any input file is read.
    values |= groups_of(flat, {g: values[g] for g in GROUPS if g in values} or None)
    device = _device(args.device)
    # A reproduction must run in the precision the image was made in (bf16 != fp32 bit for bit).
    dtype_name = args.dtype or (base.dtype if base else str(defaults.get("dtype", "auto")))
    dtype = SHORT_NAMES[resolve_dtype(dtype_name, device)]
    explicit_size = bool(args.size or args.width is not None or args.height is not None or base)
    size = (values.get("width", 1024), values.get("height", 1024)) if explicit_size else None
    inpaint = values.get("inpaint", Inpaint())
    sources = plan_sources(
        init_path=args.init_image, mask_path=args.mask, recorded=base.sources if base else Sources(),
        size=size, only_masked=inpaint.only_masked, comfy=values.get("comfy"),
    )  # fmt: skip
    values["sources"] = sources.sources
    if sources.size is not None:
        values["width"], values["height"] = sources.size
    if sources.inputs.init_image is None and values.get("denoise", 1.0) < 1.0:
        raise AnimaError("--denoise below 1 needs --init-image")
    values |= {"model": files.name if files is not None else "", "model_hash": model_hash, "dtype": dtype}
    values["controls"] = control_units(args, base.controls if base else ())
    recipe = Recipe.make(values.pop("prompt"), **values).validate()  # made, and so checked, once
    recipe = check_hires_upscaler(args, recipe, upscaler_resolver(args))
    check_region_inputs(recipe)
    resolve = control_resolver(args)
    notes = check_controls(recipe.controls, resolve, files) if recipe.controls else []
    stored = None
    if args.from_png and not (args.grid or args.prompt_matrix):
        text = read_png_text(args.from_png).get(GRID_KEY)
        stored = json.loads(text) if text else None
    plan = plan_job(
        recipe, grid=tuple(parse_axis(a) for a in args.grid or ()), prompt_matrix=args.prompt_matrix,
        batch_count=args.batch_count, wildcards_dir=args.wildcards_dir, stored_grid=stored,
    )  # fmt: skip
    memo = {_input_key(recipe): sources.inputs}

    def inputs(r):
        # Batches and cells load their (recorded) inputs once per distinct file, size and mode.
        key = _input_key(r)
        if key not in memo:
            memo[key] = recipe_inputs(r)
        return memo[key]

    for r in plan.recipes:  # check every cell's files before loading anything
        inputs(r)
    return Request(recipe, plan, inputs, str(device), dtype, resolve, tuple(notes))


def _input_key(recipe) -> tuple:
    return (recipe.sources, recipe.width, recipe.height, recipe.inpaint.area)


def _recorded_kernel(args: argparse.Namespace, recipe) -> str | None:
    """A PNG's 8-bit run re-made with the matmul it ran: one that records none was made before the
    CPU int8 kernels, when every CPU dequantised 8-bit weights per call."""
    p = recipe.perf
    if args.from_png and p.weights and not p.weights_matmul and args.device in (None, "cpu"):
        return "dequant"
    return None


def run_generate(args: argparse.Namespace) -> int:
    from anima.cli.comfy import comfyui_names, export_workflow, graph_source, run_graph
    from anima.cli.model_selection import check_job_loras, model_notice, resolve_files
    from anima.cli.perf_flags import run_options
    from anima.cli.upscale import upscaler_resolver
    from anima.imageio import comfyui_chunks, output_paths, save_png
    from anima.jobs.plan import render
    from anima.lora.comfy_keys import comfyui_applies_all
    from anima.pipeline import Pipeline
    from anima.weights.hashes import model_hash

    source = graph_source(args)  # --workflow, or --from-png of a ComfyUI PNG: the graph decides
    if source is not None:
        if args.export_workflow:
            raise AnimaError("--export-workflow writes a recipe as a graph; this input is a graph already")
        return run_graph(args, *source)
    # Checks the paths exist and are the right kinds (headers only); with no model anywhere and
    # none asked for, the bundled DEMO model, with the settings it was trained for.
    files = resolve_files(args, demo_fallback=True)
    hash_cache = _hash_cache()
    digest = model_hash(files.diffusers / "transformer" if files.diffusers else files.dit, hash_cache)
    req = read_request(args, files, digest)
    if args.export_workflow:
        return export_workflow(args, req.recipe, files)
    notice = model_notice(files)
    if notice:  # said once every flag has been checked
        print(notice, file=sys.stderr)
    out = args.output or _default_output(req.recipe.seed)
    if out.suffix.lower() != ".png":
        raise AnimaError(f"--output must end in .png, got '{out}'")
    if out.parent.exists() and not out.parent.is_dir():
        raise AnimaError(f"{out.parent}: not a folder")
    resolver = check_job_loras(args, req.plan.recipes)  # every LoRA found and checked (headers only)
    big = max(req.plan.recipes, key=lambda r: r.width * r.height * r.batch_size)
    options = run_options(
        args, device=req.device, dtype=req.dtype, weights=req.recipe.perf.weights,
        weights_kernel=_recorded_kernel(args, req.recipe),
        fp16_accumulation=req.recipe.perf.fp16_accumulation, lora_resolver=resolver, hash_cache=hash_cache,
        upscaler_resolver=upscaler_resolver(args), control_resolver=req.control_resolver,
        plan_size=(big.width, big.height, big.batch_size),
    )  # fmt: skip
    pipe = Pipeline.load(files, options, model_hash_value=digest)
    for note in pipe.notes:
        print(note, file=sys.stderr)
    seeds = sorted({r.seed for r in req.plan.recipes})
    print(f"seed: {seeds[0]}" if len(seeds) == 1 else f"seeds: {seeds[0]}..{seeds[-1]}", file=sys.stderr)
    bar = _progress_bar(args.no_progress)
    try:
        with pipe.profiled(args.profile) as prof:
            outputs = render(
                pipe, req.plan, req.inputs, progress=bar, on_note=lambda t: print(t, file=sys.stderr)
            )
    finally:
        if hasattr(bar, "close"):
            bar.close()
    if prof is not None:
        print(prof.report(), file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = comfyui_names(files)
    said: set[str] = set()
    fits: dict[str, bool] = {}

    def lora_fits(name: str) -> bool:
        if name not in fits:
            fits[name] = comfyui_applies_all(resolver(name))
        return fits[name]

    for path, (img, recipe, extra) in zip(output_paths(out, len(outputs)), outputs, strict=True):
        chunks, why = comfyui_chunks(recipe, names, lora_fits)  # the ComfyUI graph, or why none
        if why and why not in said:
            said.add(why)
            print(f"anima: {why}; the PNGs carry no ComfyUI workflow", file=sys.stderr)
        save_png(path, img, recipe, extra_json={**(extra or {}), **chunks}, comfyui=False)
        print(path)
    return 0


def _hash_cache() -> Path:
    import os

    from anima.weights.discovery import default_data_dir

    return default_data_dir(os.environ, Path.home()) / "model_hashes.json"


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise AnimaError(f"unknown device '{name}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnimaError("--device cuda asked for, but torch sees no CUDA GPU")
    return dev


def _default_output(seed: int) -> Path:
    base = Path("outputs")
    n = 0
    while True:
        p = base / f"anima_{seed}_{n:04d}.png"
        if not p.exists() and not p.with_name(p.stem + "_0.png").exists():
            return p
        n += 1


def _progress_bar(disabled: bool):
    if disabled:
        return None
    from tqdm import tqdm

    state: dict = {}

    def update(step: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr)
        bar = state["bar"]
        bar.update(step - bar.n)

    def close() -> None:
        if "bar" in state:
            state["bar"].close()

    update.close = close  # type: ignore[attr-defined]
    return update
