"""Speed and memory flags of ``anima generate`` and how they are applied to a loaded pipeline.

    --weights int8|fp8      8-bit DiT weights (anima.runtime.quant), for GPUs short of memory
    --vram-budget GB|auto   memory plan: text-encoder release, block streaming (anima.runtime.memory)
    --profile               time and peak memory per part (anima.runtime.profile)
    --compile               torch.compile the DiT blocks; the warm-up is timed and reported apart
    --attention NAME        auto | sdpa | math | sage | xformers (anima.model.attention)
    --step-cache T          opt-in first-block step cache with threshold T (changes the image)
    --fp16-accumulation     fp16 accumulation in CUDA matmuls, where torch supports it

Everything is validated before any model is loaded (`PerfOptions.from_args`), and nothing here
changes results unless asked to (`--weights`, `--step-cache` and `--fp16-accumulation` do).
"""

from __future__ import annotations

import argparse
import functools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from anima.errors import AnimaError

if TYPE_CHECKING:  # torch is imported lazily: building the CLI parser must stay light
    import torch


WEIGHT_FORMATS = ("int8", "fp8")


def add_perf_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed and memory")
    g.add_argument("--weights", choices=WEIGHT_FORMATS, help="store the DiT's block weights in 8 bits")
    g.add_argument("--vram-budget", metavar="GB", help="device memory to plan for: a number of GB or 'auto'")
    g.add_argument("--profile", action="store_true", help="report time and peak memory of each part")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (slow first step)")
    g.add_argument("--attention", default="auto", help="attention kernel: auto, sdpa, math, sage, xformers")
    g.add_argument(
        "--step-cache", type=float, metavar="T",
        help="skip DiT blocks on steps where block 0 barely changed (0.05-0.15; changes the image)",
    )  # fmt: skip
    g.add_argument("--fp16-accumulation", action="store_true", help="fp16 accumulation in CUDA matmuls")


EXTRA_WEIGHTS = "Weights"
EXTRA_STEP_CACHE = "Step cache"
EXTRA_FP16_ACC = "FP16 accumulation"


@dataclass(frozen=True)
class PerfOptions:
    weights: str | None = None
    vram_budget: str | None = None
    profile: bool = False
    compile: bool = False
    attention: str = "auto"
    step_cache: float | None = None
    fp16_accumulation: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PerfOptions:
        get = functools.partial(getattr, args)
        return cls(
            weights=get("weights", None), vram_budget=get("vram_budget", None),
            profile=bool(get("profile", False)), compile=bool(get("compile", False)),
            attention=get("attention", None) or "auto", step_cache=get("step_cache", None),
            fp16_accumulation=bool(get("fp16_accumulation", False)),
        ).checked()  # fmt: skip

    def checked(self) -> PerfOptions:
        """Self, or AnimaError naming the first bad option (flags and recorded recipes alike)."""
        from anima.model.attention import resolve_backend

        resolve_backend(self.attention)
        if self.weights not in (None, *WEIGHT_FORMATS):
            raise AnimaError(f"--weights takes {' or '.join(WEIGHT_FORMATS)}, got '{self.weights}'")
        if self.step_cache is not None and not 0 < self.step_cache < 1:
            raise AnimaError(f"--step-cache takes a threshold in (0, 1), e.g. 0.1; got {self.step_cache}")
        if self.vram_budget not in (None, "auto"):
            try:
                ok = float(self.vram_budget) > 0
            except ValueError:
                ok = False
            if not ok:
                raise AnimaError(f"--vram-budget takes a number of GB or 'auto', got '{self.vram_budget}'")
        return self

    def recipe_extra(self) -> dict[str, str]:
        """The options that change the image, as recipe `extra` settings (A1111 infotext keys), so a
        PNG says how it was made and ``--from-png`` makes it the same way."""
        out = {}
        if self.weights:
            out[EXTRA_WEIGHTS] = self.weights
        if self.step_cache is not None:
            out[EXTRA_STEP_CACHE] = f"{self.step_cache:g}"
        if self.fp16_accumulation:
            out[EXTRA_FP16_ACC] = "on"
        return out

    def with_recipe_extra(self, extra: dict[str, str]) -> PerfOptions:
        """Options recorded in a recipe (``--from-png``) for those the flags leave unset."""
        from dataclasses import replace

        changes: dict[str, object] = {}
        if self.weights is None and EXTRA_WEIGHTS in extra:
            changes["weights"] = extra[EXTRA_WEIGHTS]
        if self.step_cache is None and EXTRA_STEP_CACHE in extra:
            try:
                changes["step_cache"] = float(extra[EXTRA_STEP_CACHE])
            except ValueError:
                bad = extra[EXTRA_STEP_CACHE]
                raise AnimaError(f"bad '{EXTRA_STEP_CACHE}' in the recipe: {bad!r}") from None
        if extra.get(EXTRA_FP16_ACC) == "on":
            changes["fp16_accumulation"] = True
        if not changes:
            return self
        try:
            return replace(self, **changes).checked()
        except AnimaError as e:
            raise AnimaError(f"the recipe's recorded settings: {e}") from None

    def load_device(self, device: torch.device) -> torch.device:
        """Where to load the weights: the host when a budget will place them part by part."""
        import torch

        return torch.device("cpu") if self.vram_budget is not None and device.type == "cuda" else device


def apply_perf(
    pipe, opts: PerfOptions, device: torch.device, *, width: int, height: int, batch: int
) -> list[str]:
    """Apply the options to a loaded pipeline for images of the given size; returns notes to print.

    The returned notes say what was decided (memory plan, quantisation savings, compile warm-up).
    """
    import torch

    from anima.model.attention import set_backend

    notes: list[str] = []
    device = torch.device(device)
    if opts.fp16_accumulation:
        notes.append(_fp16_accumulation(device))
    if opts.weights:
        from anima.runtime.quant import quantize_dit

        report = quantize_dit(pipe.dit, opts.weights)
        notes.append(f"weights: {report.layers} DiT layers in {opts.weights}, {report.saved_gb:.2f} GB saved")
    streaming = False
    from anima.runtime.memory import budget_from_gb, cpu_default_plan

    budget = budget_from_gb(opts.vram_budget, device)  # None: no budget ('auto' on a CPU too)
    if budget is not None:
        from anima.runtime.memory import ModelSizes, apply_memory_plan, dit_activation_bytes, plan_memory

        tokens = -(-height // 16) * -(-width // 16)
        act = dit_activation_bytes(pipe.dit.cfg, tokens, 2 * batch, pipe.dtype)
        plan = plan_memory(budget, ModelSizes.of(pipe), act, quantized=bool(opts.weights))
        pipe.block_streamer = apply_memory_plan(pipe, plan, device)  # kept alive with the pipeline
        streaming = plan.stream_blocks
        notes.append(plan.describe())
    elif device.type == "cpu":
        pipe.memory_plan = cpu_default_plan()
    elif device != pipe.device:
        from anima.runtime.memory import MemoryPlan, apply_memory_plan

        apply_memory_plan(pipe, MemoryPlan(budget=None), device)
    set_backend(pipe.dit.modules(), opts.attention)
    if device.type == "cuda" and not opts.weights and not streaming:
        # One [3D, D] matmul instead of three: fewer kernel launches on a GPU. On this project's CPU
        # it measured within noise (+-5%), so CPUs keep the three separate matmuls (no extra copy).
        from anima.model.dit import fuse_qkv

        fused = sum(fuse_qkv(b.self_attn) for b in pipe.dit.blocks)
        if fused:
            notes.append(f"self-attention q/k/v fused in {fused} blocks")
    pipe.step_cache = opts.step_cache
    if opts.step_cache:
        notes.append(f"step cache on (threshold {opts.step_cache}): images differ from a run without it")
    if opts.compile:
        if streaming:
            notes.append("--compile ignored: compiled blocks cannot be streamed; raise --vram-budget")
        else:
            notes.append(compile_dit(pipe, width=width, height=height, batch=batch))
    return notes


def compile_dit(pipe, *, width: int, height: int, batch: int, options: dict | None = None) -> str:
    """torch.compile each DiT block in place (names and state dict unchanged) and warm it up once at
    the run's shapes, so the compile time is reported apart from the sampling time. `options`: Inductor
    options of this compile only (e.g. ``{"coordinate_descent_tuning": True}``)."""
    import torch

    dit = pipe.dit
    for block in dit.blocks:
        block.compile(options=options)
    x = torch.zeros(2 * batch, 16, 1, height // 8, width // 8, device=pipe.device, dtype=pipe.dtype)
    sigma = torch.full((2 * batch,), 0.5, device=pipe.device)
    ctx = torch.zeros(2 * batch, 512, dit.cfg.crossattn_emb_channels, device=pipe.device, dtype=pipe.dtype)
    t0 = time.perf_counter()
    with torch.inference_mode():
        dit(x, sigma, ctx, context_cache=dit.prepare_context(ctx))
    return f"compile: DiT blocks compiled, warm-up {time.perf_counter() - t0:.1f} s"


def _fp16_accumulation(device: torch.device) -> str:
    """Process-wide switch (a torch backend flag, like TF32): asked for explicitly, CUDA only."""
    import torch

    matmul = torch.backends.cuda.matmul
    if device.type != "cuda" or not hasattr(matmul, "allow_fp16_accumulation"):
        return "--fp16-accumulation ignored: needs a CUDA device and torch >= 2.7"
    matmul.allow_fp16_accumulation = True
    return "fp16 accumulation on for CUDA matmuls (results differ slightly)"
