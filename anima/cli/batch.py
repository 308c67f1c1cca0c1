"""`anima batch JOBS`: render a JSONL / CSV / prompt-list file into an output folder with a manifest.

Flags give the defaults every job starts from (a job's own fields win). Bad lines are reported as
``file:line: message`` while the other jobs run; the exit status is 2 when any job failed. Re-running
the same command skips finished images. ``--ray [ADDRESS]`` renders on a Ray cluster instead
(`anima.jobs.ray`); ``anima explore`` shares these flags.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from anima.errors import AnimaError

_DEFAULT_FLAGS = ("negative_prompt", "steps", "cfg", "sampler", "scheduler", "shift", "seed", "batch_size")


def add_render_args(p: argparse.ArgumentParser) -> None:
    """Recipe defaults, device and Ray flags shared by `batch` and `explore`."""
    g = p.add_argument_group("recipe defaults")
    g.add_argument("--negative-prompt", "-n", help="negative prompt (default: the model card's)")
    g.add_argument("--size", help="WxH or a preset name")
    g.add_argument("--steps", type=int)
    g.add_argument("--cfg", type=float)
    g.add_argument("--sampler")
    g.add_argument("--scheduler")
    g.add_argument("--shift", type=float)
    g.add_argument("--seed", type=int, help="seed for jobs that set none (default 0)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--quality", choices=["default", "none"], default="none",
                   help="default: add the card's quality prefix and negative prompt")  # fmt: skip
    r = p.add_argument_group("running")
    r.add_argument("--out", "-o", type=Path, help="output folder")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    r.add_argument("--dtype", default="auto", help="fp32, bf16, fp16 or auto")
    r.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray: no value starts a local cluster; or a cluster address")  # fmt: skip
    r.add_argument("--ray-workers", type=int, help="number of Ray actors (default: GPUs, or 2 CPU workers)")
    r.add_argument("--no-progress", action="store_true", help="no per-image lines on stderr")
    from anima.cli.perf_flags import add_perf_args

    add_perf_args(p)


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", type=Path, help="JOBS.jsonl, a CSV with a header, or a text file of prompts")
    add_render_args(p)


def recipe_defaults(args: argparse.Namespace, model_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Recipe fields from the flags, over the model's own defaults (see `resolve_model`)."""
    from anima.recipe import parse_size

    out = {k: v for k, v in (model_defaults or {}).items() if k != "dtype"}
    out |= {k: getattr(args, k) for k in _DEFAULT_FLAGS if getattr(args, k, None) is not None}
    if args.size:
        out["width"], out["height"] = parse_size(args.size)
    if getattr(args, "step_cache", None) is not None:
        out["step_cache"] = args.step_cache
    if getattr(args, "quality", "none") == "default" and "negative_prompt" not in out:
        from anima.prompt_tools.presets import CARD_NEGATIVE

        out["negative_prompt"] = CARD_NEGATIVE
    return out


def with_quality(args: argparse.Namespace, prompt: str) -> str:
    if getattr(args, "quality", "none") != "default":
        return prompt
    from anima.prompt_tools.presets import apply_quality, quality_preset

    return apply_quality(prompt, None, quality_preset("default"))[0]


def resolve_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model flags -> (PipelineSpec, the model's own recipe defaults); paths checked, nothing
    loaded. With no model anywhere and none asked for, the bundled DEMO model (said on stderr)."""
    from anima.cli.control_flags import control_resolver
    from anima.cli.model_selection import model_notice, model_recipe_defaults, resolve_files
    from anima.cli.perf_flags import run_options
    from anima.jobs.batch import PipelineSpec

    files = resolve_files(args, demo_fallback=True)
    model_defaults = model_recipe_defaults(files)
    dtype = str(model_defaults.get("dtype", "auto")) if args.dtype == "auto" else args.dtype
    options = run_options(
        args, device=args.device, dtype=dtype, weights=getattr(args, "weights", None),
        fp16_accumulation=bool(getattr(args, "fp16_accumulation", False)),
        control_resolver=control_resolver(args),
    )  # fmt: skip
    notice = model_notice(files)
    if notice:
        print(notice, file=sys.stderr)
    return PipelineSpec(files, options), model_defaults


def run_stamp(spec) -> dict[str, Any]:
    """What the pipeline will stamp into every recipe (dtype with auto resolved for the device, 8-bit
    weights, fp16 accumulation): applied before the jobs are keyed, so a key names the image."""
    import torch

    from anima.runtime.precision import SHORT_NAMES, resolve_dtype

    o = spec.options
    dtype = SHORT_NAMES[resolve_dtype(o.dtype, torch.device(o.device))]
    return {"dtype": dtype, "weights": o.weights, "fp16_accumulation": o.fp16_accumulation}


def make_executor(args: argparse.Namespace, spec):
    """A RayExecutor for --ray, else a LocalExecutor; built on first use (a finished run loads nothing)."""
    from anima.jobs.batch import LazyExecutor, LocalExecutor

    if args.ray is not None:
        from anima.jobs.ray import RayExecutor, require_ray

        try:
            require_ray()  # before anything is written
        except AnimaError:
            raise AnimaError("--ray needs Ray: pip install 'anima[ray]' (or pip install ray)") from None

        address = None if args.ray == "local" else args.ray
        return LazyExecutor(lambda: RayExecutor(spec, address=address, workers=args.ray_workers))
    return LazyExecutor(lambda: LocalExecutor(spec.build()))


def progress_printer(args: argparse.Namespace, store_root: Path):
    if args.no_progress:
        return None

    def show(done: int, total: int, job) -> None:
        print(f"[{done}/{total}] {job.where()} -> {store_root / 'images' / job.key}.png", file=sys.stderr)

    return show


def run_batch(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from anima.jobs.batch import read_jobs, run_jobs, with_keys
    from anima.jobs.store import OutputStore

    spec, model_defaults = resolve_model(args)
    jobs, errors = read_jobs(args.jobs, recipe_defaults(args, model_defaults))
    jobs = [replace(j, recipe=j.recipe.with_(prompt=with_quality(args, j.recipe.prompt))) for j in jobs]
    out = args.out or args.jobs.with_suffix("").with_name(args.jobs.stem + "_out")
    store = OutputStore(out)
    for e in errors:
        print(f"anima: error: {e}", file=sys.stderr)
    stamp = run_stamp(spec)
    jobs = [replace(j, recipe=j.recipe.with_(**stamp)) for j in jobs]
    jobs = with_keys(jobs, spec.fingerprint(), stamp["dtype"])
    executor = make_executor(args, spec)

    def fail_line(msg: str) -> None:
        print(f"anima: error: {msg}", file=sys.stderr)

    progress = progress_printer(args, store.root)
    report = run_jobs(jobs, store, executor, line_errors=errors, progress=progress)
    for msg in report.errors[len(errors) :]:
        fail_line(msg)
    print(
        f"{report.rendered} rendered, {report.skipped} already done, {len(report.errors)} failed; "
        f"manifest: {store.manifest_path}"
    )
    return 2 if report.errors else 0
