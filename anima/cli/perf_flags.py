"""Speed and memory flags: the ones that change the image are recipe settings (``--weights``,
``--step-cache``, ``--fp16-accumulation``, see `anima.recipe.Perf`), the rest become the
pipeline's `RunOptions` (``--vram-budget``, ``--attention``, ``--cpu-gemm``, ``--compile``,
``--merge-loras``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from anima.recipe import WEIGHT_FORMATS


def add_perf_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed and memory")
    g.add_argument("--weights", choices=WEIGHT_FORMATS, help="store the DiT's block weights in 8 bits")
    g.add_argument("--vram-budget", metavar="GB", help="device memory to plan for: a number of GB or 'auto'")
    g.add_argument("--ram-budget", metavar="GB", help="host memory to plan a CPU run for: GB or 'auto'")
    g.add_argument("--profile", action="store_true", help="report time and peak memory of each part")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (slow first step)")
    g.add_argument("--attention", default="auto", help="attention kernel: auto, sdpa, math, sage, xformers")
    g.add_argument(
        "--cpu-gemm", default="auto", help="library for fp32 linears and attention on CPUs: auto, mkl, onednn"
    )
    g.add_argument(
        "--step-cache", type=float, metavar="T",
        help="skip DiT blocks on steps where block 0 barely changed (0.05-0.15; changes the image)",
    )  # fmt: skip
    g.add_argument("--fp16-accumulation", action="store_true", help="fp16 accumulation in CUDA matmuls")


def run_options(
    args: argparse.Namespace,
    *,
    device: str,
    dtype: str,
    weights: str | None,
    fp16_accumulation: bool,
    weights_kernel: str | None = None,
    lora_resolver: Callable[[str], Path] | None = None,
    upscaler_resolver: Callable[[str], Path] | None = None,
    control_resolver: Callable[[str], Path] | None = None,
    hash_cache: Path | None = None,
    plan_size: tuple[int, int, int] = (1024, 1024, 1),
):
    """The pipeline options of a command, from its flags; `weights` and `fp16_accumulation` come from
    the recipe (flags or a PNG's record) so the pipeline runs what the recipe says."""
    from anima.pipeline.options import RunOptions
    from anima.runtime.memory import parse_budget

    return RunOptions(
        device=device, dtype=dtype, weights=weights, weights_kernel=weights_kernel,
        fp16_accumulation=fp16_accumulation, vram_budget=parse_budget(getattr(args, "vram_budget", None)),
        ram_budget=parse_budget(getattr(args, "ram_budget", None), setting="ram_budget"),
        attention=getattr(args, "attention", None) or "auto",
        cpu_gemm=getattr(args, "cpu_gemm", None) or "auto", compile=bool(getattr(args, "compile", False)),
        merge_loras=bool(getattr(args, "merge_loras", False)), lora_resolver=lora_resolver,
        upscaler_resolver=upscaler_resolver, control_resolver=control_resolver, hash_cache=hash_cache,
        plan_size=plan_size,
    )  # fmt: skip
