"""Measuring helpers of `python -m bench.gpu`: load a pipeline as the CLI does, time a run with
synchronisation, compare images. On a CPU (`--device cpu`, the dry run) the memory numbers are 0."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from bench.runners import CFG, NEGATIVE, PROMPT


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def gb(n: int) -> float:
    return round(n / 2**30, 3)


def peak(device: torch.device) -> tuple[int, int]:
    """(allocated, reserved) high-water marks since the last reset; zeros off CUDA."""
    if device.type != "cuda":
        return 0, 0
    return torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def recipe(size: int, steps: int):
    from anima.recipe import Recipe

    return Recipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, steps=steps, cfg=CFG,
        sampler="euler", scheduler="simple", seed=0,
    )  # fmt: skip


def load(
    files, tokenizers: Path, device: torch.device, *, size: int, dtype="bf16", hash_cache=None, **options
) -> tuple[object, list[str], float]:
    """The pipeline as `anima generate --device D` builds it, with `options` as RunOptions fields.
    `hash_cache` as the CLI keeps one (the DiT's A1111 hash is computed once per file, not per load)."""
    from anima.pipeline import Pipeline, RunOptions

    opts = RunOptions(
        device=str(device), dtype=dtype, hash_cache=hash_cache, plan_size=(size, size, 1), **options
    )
    t0 = time.perf_counter()
    pipe = Pipeline.from_files(
        files.dit, files.text_encoder, files.vae, tokenizer_dir=tokenizers, options=opts
    )
    sync(device)
    return pipe, list(pipe.notes), time.perf_counter() - t0


def timed(pipe, rec, device: torch.device, *, phases: bool = False) -> tuple[dict, torch.Tensor]:
    """One generate call: wall time and peak VRAM; with `phases`, the text / sampling / decode split
    and per-step times (a synchronize per step, so the wall time of that run is slightly higher)."""
    marks: dict[str, list[float]] = {"dit_start": [], "steps": []}
    handles = []
    progress = None
    if phases:

        def dit_pre(*_a, **_k) -> None:
            if not marks["dit_start"]:
                sync(device)
                marks["dit_start"].append(time.perf_counter())

        def on_step(_step: int, _total: int) -> None:
            sync(device)
            marks["steps"].append(time.perf_counter())

        handles.append(pipe.dit.register_forward_pre_hook(dit_pre, with_kwargs=True))
        progress = on_step
    sync(device)
    reset_peak(device)
    t0 = time.perf_counter()
    try:
        res = pipe.generate(rec, progress=progress)
        img = res.images.float().cpu()
        sync(device)
    finally:
        for h in handles:
            h.remove()
    wall = time.perf_counter() - t0
    alloc, reserved = peak(device)
    out = {
        "wall_s": round(wall, 3), "peak_vram_gb": gb(alloc), "peak_reserved_gb": gb(reserved),
        "finite": bool(torch.isfinite(img).all()), "image_std": round(img.std().item(), 4),
    }  # fmt: skip
    if phases and marks["dit_start"] and marks["steps"]:
        s, start = marks["steps"], marks["dit_start"][0]
        steps = [b - a for a, b in zip([start, *s[:-1]], s, strict=True)]
        out.update(
            text_s=round(start - t0, 3), sampling_s=round(s[-1] - start, 3),
            decode_s=round(t0 + wall - s[-1], 3), step_median_s=round(sorted(steps)[len(steps) // 2], 4),
            step_first_s=round(steps[0], 4),
        )  # fmt: skip
    return out, img


def diff(a: torch.Tensor, b: torch.Tensor | None) -> dict:
    """Mean absolute difference and PSNR of two [B,H,W,3] images in [0, 1] (empty without `b`)."""
    if b is None:
        return {}
    mse = (a - b).pow(2).mean().item()
    psnr = float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(1.0 / mse)).item()
    return {"mean_abs_diff": round((a - b).abs().mean().item(), 5), "psnr_db": round(psnr, 2)}


def best_of(pipe, rec, device: torch.device, n: int) -> tuple[dict, torch.Tensor]:
    best, img = None, None
    for _ in range(n):
        r, img = timed(pipe, rec, device)
        if best is None or r["wall_s"] < best["wall_s"]:
            best = r
    return best, img


def top_kernels(fn, device: torch.device, rows: int = 18) -> list[str]:
    """The profiler table of one call of `fn`, top `rows` by self device time (CPU time off CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=70)
    return table.splitlines()


def median_s(fn, device: torch.device, n: int = 5) -> float:
    times = []
    for _ in range(n):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2]
