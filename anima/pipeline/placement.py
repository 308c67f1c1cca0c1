"""Applying a pipeline's `RunOptions` once, when it is built: 8-bit weights, the memory plan and
where each part lives, the attention kernel, fused projections on GPUs, compilation.

The order matters: the plan is made from the parts' sizes *after* quantisation, and compiled
blocks cannot be streamed. Each decision is described in a note the front ends show.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from anima.errors import AnimaError
from anima.model.attention import set_backend
from anima.model.dit import fuse_qkv
from anima.pipeline.options import RunOptions
from anima.runtime.memory import (
    GB,
    MemoryPlan,
    ModelSizes,
    available_ram,
    budget_from_gb,
    dit_activation_bytes,
    module_bytes,
    plan_memory,
    plan_ram,
)  # fmt: skip
from anima.runtime.quant import (
    cast_unquantized,
    has_int8_kernel,
    kernel_note,
    loaded_note,
    prepack,
    quantize_dit,
    requantize_q8_0,
)  # fmt: skip
from anima.runtime.streaming import BlockStreamer


def load_device(options: RunOptions, device: torch.device) -> torch.device:
    """Where to load the weights: the host when a budget will place them part by part on a GPU."""
    return torch.device("cpu") if options.vram_budget is not None and device.type == "cuda" else device


def prepare(pipe, notes: list[str]) -> tuple[MemoryPlan, BlockStreamer | None]:
    """Apply `pipe.options` to the freshly built pipeline; -> (its memory plan, the block streamer
    to keep alive, or None). Appends what was decided to `notes`."""
    opts, device = pipe.options, pipe.device
    if opts.fp16_accumulation:
        notes.append(_fp16_accumulation(device))
    loaded = loaded_note(pipe.dit, device)
    if loaded:
        notes.append(loaded)
    if has_int8_kernel(device) and (n := requantize_q8_0(pipe.dit, pipe.dtype)):
        notes.append(f"weights: {n} GGUF Q8_0 layers as per-channel int8, {kernel_note('int8', device)}")
    budget = budget_from_gb(opts.vram_budget, device)
    upcast = upcasts_blocks(opts, device, pipe.dtype) and budget is None
    if opts.weights:
        report = quantize_dit(
            pipe.dit, opts.weights, compute_dtype=pipe.dtype, kernel=opts.weights_kernel,
            cast_blocks=not upcast,
        )  # fmt: skip
        notes.append(
            f"weights: {report.layers} DiT layers in {opts.weights}, {report.saved_gb:.2f} GB saved, "
            f"{kernel_note(opts.weights, device, opts.weights_kernel)}"
        )
    if opts.ram_budget is not None:
        plan = _ram_plan(pipe, opts)
        notes.append(plan.describe())
    elif budget is not None:
        tokens, batch = _tokens(opts)
        act = dit_activation_bytes(pipe.dit.cfg, tokens, 2 * batch, pipe.dtype)
        plan = plan_memory(budget, ModelSizes.of(pipe), act, quantized=bool(opts.weights))
        notes.append(plan.describe())
    else:
        # On a CPU the text encoder (2 GB in fp32) is freed before the DiT runs: its reload costs a
        # few seconds per new prompt next to minutes of CPU sampling, and the run's peak RSS stays
        # near the DiT plus the VAE. On a GPU without a budget everything stays resident.
        plan = MemoryPlan(budget=None, release_text_encoder=device.type == "cpu")
        if upcast and any(_stored_apart(b, pipe.dtype) for b in pipe.dit.blocks):
            plan = dataclasses.replace(plan, stream_blocks=True, resident_blocks=0, prefetch=0, ram=True)
            notes.append(plan.describe())
    if opts.release_text_encoder is not None:
        plan = dataclasses.replace(plan, release_text_encoder=opts.release_text_encoder)
    streamer = place(pipe, plan, device)
    if device.type == "cpu":
        prepack(pipe.dit)
    set_backend(pipe.dit.modules(), opts.attention)
    if device.type == "cuda" and not opts.weights and streamer is None:
        # One [3D, D] matmul instead of three: fewer kernel launches on a GPU. On CPUs it measured
        # within noise (+-5%), so they keep the three separate matmuls (no extra copy).
        fused = sum(fuse_qkv(b.self_attn) for b in pipe.dit.blocks)
        if fused:
            notes.append(f"self-attention q/k/v fused in {fused} blocks")
    if opts.compile:
        if streamer is not None:
            notes.append("compile skipped: compiled blocks cannot be streamed; raise the memory budget")
        else:
            notes.append(compile_dit(pipe, *opts.plan_size))
    return plan, streamer


def upcasts_blocks(options: RunOptions, device: torch.device, dtype: torch.dtype) -> bool:
    """8-bit blocks on a CPU that computes in fp32 (`auto` without fast bf16, e.g. AVX2): the rest
    of each block (`STORED_PER_BLOCK`, the AdaLN modulations) stays in the file's dtype and is upcast
    as the block runs, one block at a time into reused buffers. Cast at load it was 0.66 GB more for
    the 2B DiT, a fifth of the 8-bit run's memory; the upcast is exact, so the image is the same."""
    cpu_fp32 = device.type == "cpu" and dtype == torch.float32
    return bool(options.weights) and cpu_fp32 and options.ram_budget is None


def _stored_apart(block: torch.nn.Module, dtype: torch.dtype) -> bool:
    return any(p.is_floating_point() and p.dtype != dtype for p in block.parameters())


def _tokens(opts: RunOptions) -> tuple[int, int]:
    width, height, batch = opts.plan_size
    return math.ceil(height / 16) * math.ceil(width / 16), batch


def _ram_plan(pipe, opts: RunOptions) -> MemoryPlan:
    """``--ram-budget`` on a CPU: plan from the compute-dtype sizes and the blocks as loaded (the
    DiT came in its file's dtype, `Pipeline.load`), then cast what the plan keeps in the compute
    dtype; the other blocks stay as loaded and are upcast per block by the streamer (`place`)."""
    budget = int(opts.ram_budget * GB) if opts.ram_budget != "auto" else available_ram()
    if budget is None:
        raise AnimaError("RAM budget 'auto' needs /proc/meminfo; give a number of GB", setting="ram_budget")
    tokens, batch = _tokens(opts)
    act = dit_activation_bytes(pipe.dit.cfg, tokens, 2 * batch, pipe.dtype)
    stored = tuple(module_bytes(b) for b in pipe.dit.blocks)
    sizes = ModelSizes.of(pipe, dit_dtype=pipe.dtype)
    plan = plan_ram(budget, sizes, stored, act, quantized=bool(opts.weights))
    for name, child in pipe.dit.named_children():
        if name != "blocks":
            cast_unquantized(child, pipe.dtype)
    for block in pipe.dit.blocks[: plan.resident_blocks]:
        cast_unquantized(block, pipe.dtype)
    return plan


def place(pipe, plan: MemoryPlan, device: torch.device) -> BlockStreamer | None:
    """Put every part where `plan` says: streamed blocks stay on the host behind a `BlockStreamer`
    (returned), the text encoder runs on the CPU when the plan says so. A RAM plan's streamed blocks
    stay on the CPU in their file's dtype and are upcast to the compute dtype around their forward."""
    te_device = torch.device("cpu") if plan.text_encoder_on_host else device
    pipe.place(device, text_encoder_device=te_device, keep_blocks_on_host=plan.stream_blocks)
    if not plan.stream_blocks:
        return None
    return BlockStreamer(
        pipe.dit.blocks, device, resident=plan.resident_blocks, prefetch=plan.prefetch,
        dtype=pipe.dtype if plan.ram else None,
    ).attach()  # fmt: skip


def compile_dit(pipe, width: int, height: int, batch: int, options: dict | None = None) -> str:
    """torch.compile each DiT block in place (names and state dict unchanged) and warm it up once at
    the run's shapes, so the compile time is reported apart from the sampling time. `options`: Inductor
    options of this compile only (e.g. ``{"coordinate_descent_tuning": True}``)."""
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
    matmul = torch.backends.cuda.matmul
    if device.type != "cuda" or not hasattr(matmul, "allow_fp16_accumulation"):
        return "fp16 accumulation ignored: needs a CUDA device and torch >= 2.7"
    matmul.allow_fp16_accumulation = True
    return "fp16 accumulation on for CUDA matmuls (results differ slightly)"
