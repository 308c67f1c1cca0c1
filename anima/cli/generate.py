"""`anima generate`: flags -> Recipe -> Pipeline -> PNGs with metadata.

Order matters for "bad input loses nothing": every flag, the output path and the model paths
are checked before any model is loaded or any file is written.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from anima.errors import AnimaError


def add_generate_args(p: argparse.ArgumentParser) -> None:
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
    from anima.cli.workflow_flags import add_workflow_args

    add_workflow_args(p)
    from anima.runtime.options import add_perf_args

    add_perf_args(p)


_RECIPE_FLAGS = (
    "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "shift", "seed",
    "batch_size", "denoise",
)  # fmt: skip


def recipe_from_args(args: argparse.Namespace, model_defaults: Mapping[str, object] | None = None):
    """Flags (and --from-png) -> a validated Recipe. Flags given explicitly win over a --preset,
    which wins over the model's own defaults (the demo model's 64x64), which win over the PNG.
    Workflow flags land in ``recipe.extra`` (see `Workflow`)."""
    from anima.cli.workflow_flags import build_workflow, preset_defaults
    from anima.imageio import read_recipe
    from anima.recipe import Recipe, parse_size
    from anima.recipe.settings import Workflow
    from anima.sampling import samplers, schedules

    base = read_recipe(args.from_png) if args.from_png else None
    prompt = args.prompt if args.prompt is not None else args.prompt_pos
    if args.prompt is not None and args.prompt_pos is not None:
        raise AnimaError("give the prompt either as an argument or with --prompt, not both")
    preset_recipe, preset_workflow = preset_defaults(getattr(args, "preset", None))
    explicit = {k: getattr(args, k) for k in _RECIPE_FLAGS if getattr(args, k) is not None}
    changes = {**(model_defaults or {}), **preset_recipe, **explicit}
    if args.size:
        if args.width is not None or args.height is not None:
            raise AnimaError("give either --size or --width/--height, not both")
        changes["width"], changes["height"] = parse_size(args.size)
    if prompt is not None:
        changes["prompt"] = prompt
    if getattr(args, "lora", None):
        from anima.lora.prompt import parse_lora_arg

        changes["loras"] = tuple(parse_lora_arg(a) for a in args.lora)
    if base is None:
        if "prompt" not in changes:
            raise AnimaError('no prompt: anima generate "1girl, ..." (or --from-png IMAGE)')
        recipe = Recipe(**changes)
    else:
        recipe = base.with_(**changes)
    if args.seed is None and base is None:
        recipe = recipe.with_(seed=secrets.randbits(32))
    if not recipe.negative_prompt:
        preset_workflow.pop("nag_scale", None)  # NAG only serves a negative prompt
    wf = build_workflow(Workflow.from_recipe(recipe), args, preset_workflow)
    recipe = wf.apply(recipe)
    recipe.validate(samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
    wf.validate(samplers.SAMPLERS.keys(), schedules.SCHEDULERS.keys())
    return recipe


def _size_explicit(args: argparse.Namespace) -> bool:
    return bool(args.size or args.width is not None or args.height is not None or args.from_png)


def plan_from_args(args: argparse.Namespace, model_defaults: Mapping[str, object] | None = None):
    """Everything checked, nothing loaded: -> (Job, sources(recipe) -> Sources)."""
    import json

    from anima.cli.workflow_flags import check_counts
    from anima.imageio import read_png_text
    from anima.jobs.grid import GRID_KEY
    from anima.jobs.plan import plan_job
    from anima.workflows.sources import resolve_sources

    check_counts(args)
    recipe = recipe_from_args(args, model_defaults)
    recipe, first = resolve_sources(
        recipe, init_path=args.init_image, mask_path=args.mask, size_explicit=_size_explicit(args)
    )
    if first.init_image is None and recipe.denoise < 1.0:
        raise AnimaError("--denoise below 1 needs --init-image")
    stored = None
    if args.from_png and not (args.grid or args.prompt_matrix):
        text = read_png_text(args.from_png).get(GRID_KEY)
        stored = json.loads(text) if text else None
    job = plan_job(
        recipe, grid=args.grid, prompt_matrix=args.prompt_matrix, batch_count=args.batch_count,
        wildcards_dir=args.wildcards_dir, stored_grid=stored,
    )  # fmt: skip
    memo = {_paths(recipe): first}

    def sources(r):
        # Batches and cells load their (recorded) inputs once per distinct file, size and mode.
        key = _paths(r)
        if key not in memo:
            memo[key] = resolve_sources(r, init_path=None, mask_path=None, size_explicit=True)[1]
        return memo[key]

    for r in job.recipes:  # check every cell's files before loading anything
        sources(r)
    return job, sources


def _paths(recipe) -> tuple:
    from anima.recipe.settings import Workflow

    wf = Workflow.from_recipe(recipe)
    return (wf.init_image, wf.mask, recipe.width, recipe.height, wf.inpaint_area)


def run_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from anima.cli.model_selection import model_notice, model_recipe_defaults, resolve_files
    from anima.imageio import output_paths, save_png
    from anima.jobs.plan import render
    from anima.runtime.precision import SHORT_NAMES, parse_dtype, resolve_dtype

    # Checks the paths exist and are the right kinds (headers only); with no model anywhere and
    # none asked for, the bundled DEMO model, with the settings it was trained for.
    files = resolve_files(args, demo_fallback=True)
    model_defaults = model_recipe_defaults(files)
    job, sources = plan_from_args(args, model_defaults)
    notice = model_notice(files)
    if notice:  # said once every flag has been checked
        print(notice, file=sys.stderr)
    first = job.recipes[0]
    # A reproduction must run in the precision the image was made in (bf16 != fp32 bit for bit).
    auto = str(model_defaults.get("dtype", "auto"))
    dtype_name = args.dtype or (first.dtype if args.from_png else auto)
    if dtype_name != "auto":
        parse_dtype(dtype_name)
    out = args.output or _default_output(first.seed)
    if out.suffix.lower() != ".png":
        raise AnimaError(f"--output must end in .png, got '{out}'")
    if out.parent.exists() and not out.parent.is_dir():
        raise AnimaError(f"{out.parent}: not a folder")
    from anima.cli.model_selection import check_job_loras

    lora_resolver = check_job_loras(args, job.recipes)  # every LoRA found and checked (headers only)
    from anima.runtime.options import PerfOptions, apply_perf

    perf = PerfOptions.from_args(args)  # speed/memory flags, checked before loading
    if args.from_png:
        perf = perf.with_recipe_extra(dict(first.extra))

    from anima.pipeline import Pipeline

    device = _device(args.device)
    dtype = resolve_dtype(dtype_name, device)
    load_device = perf.load_device(device)  # the host when --vram-budget places parts itself
    if files.diffusers is not None:
        pipe = Pipeline.from_pretrained(
            files.diffusers, device=load_device, dtype=dtype, hash_cache=_hash_cache()
        )
    else:
        pipe = Pipeline.from_files(
            files.dit, files.text_encoder, files.vae,
            qwen_tokenizer=files.qwen_tokenizer, t5_tokenizer=files.t5_tokenizer,
            device=load_device, dtype=dtype, hash_cache=_hash_cache(),
        )  # fmt: skip
    pipe.lora_resolver, pipe.merge_loras = lora_resolver, getattr(args, "merge_loras", False)
    big = max(job.recipes, key=lambda r: r.width * r.height * r.batch_size)
    for note in apply_perf(pipe, perf, device, width=big.width, height=big.height, batch=big.batch_size):
        print(note, file=sys.stderr)
    recorded = perf.recipe_extra()  # what changes the image goes into the PNG's recipe
    job = replace(
        job,
        recipes=tuple(
            r.with_(dtype=SHORT_NAMES[dtype], extra={**dict(r.extra), **recorded}) for r in job.recipes
        ),
    )
    seeds = sorted({r.seed for r in job.recipes})
    print(f"seed: {seeds[0]}" if len(seeds) == 1 else f"seeds: {seeds[0]}..{seeds[-1]}", file=sys.stderr)
    bar = _progress_bar(args.no_progress)
    from anima.runtime.profile import maybe_profiled

    try:
        with maybe_profiled(pipe, perf.profile) as prof:
            outputs = render(pipe, job, sources, progress=bar, on_note=lambda t: print(t, file=sys.stderr))
    finally:
        if hasattr(bar, "close"):
            bar.close()
    if prof is not None:
        print(prof.report(), file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, (img, recipe, extra) in zip(output_paths(out, len(outputs)), outputs, strict=True):
        save_png(path, img, recipe, extra_json=extra)
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
