"""The sections of `python -m bench.gpu`, in the order they run (most important first).

Each takes the shared `Context` and returns a JSON-able dict. Sections that build their own pipeline
free it before returning, so the peak-VRAM numbers of the budget sections see only their own run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from bench.gpu_measure import (
    best_of,
    diff,
    free,
    gb,
    load,
    median_s,
    peak,
    reset_peak,
    sync,
    timed,
    top_kernels,
)


@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    recipe: object
    files: object = None
    pipe: object = None  # the default bf16 pipeline, from e2e until it is released
    ref: torch.Tensor | None = None  # the default bf16 image, what the variants are compared with
    state: dict = field(default_factory=dict)


def env(ctx: Context) -> dict:
    t0 = time.perf_counter()
    torch.zeros(1, device=ctx.device)
    sync(ctx.device)
    out = {
        "device": str(ctx.device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "init_s": round(time.perf_counter() - t0, 3), "size": ctx.args.size, "steps": ctx.args.steps,
        "cfg": 4.0, "sampler": "euler", "preset": ctx.args.preset,
    }  # fmt: skip
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        out.update(
            gpu=props.name, memory_gb=gb(props.total_memory), sms=props.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(), flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
        )  # fmt: skip
    return out


def weights(ctx: Context) -> dict:
    from bench import assets

    t0 = time.perf_counter()
    ctx.files = assets.random_files(ctx.args.cache, ctx.args.preset)
    made = time.perf_counter() - t0
    from anima.weights.hashes import model_hash

    model_hash(ctx.files.dit, ctx.args.cache / "hashes.json")  # once per file, as the CLI's cache does
    sizes = {k: gb(getattr(ctx.files, k).stat().st_size) for k in ("dit", "text_encoder", "vae")}
    hash_s = time.perf_counter() - t0 - made
    return {"make_random_s": round(made, 1), "first_hash_s": round(hash_s, 1), "file_gb": sizes}


def e2e(ctx: Context) -> dict:
    """Load (files just written: warm page cache), first run (warm-up), best of two, one phased run."""
    free(ctx.device)
    pipe, notes, load_s = _load(ctx)
    first, _ = timed(pipe, ctx.recipe, ctx.device, phases=True)
    best, img = best_of(pipe, ctx.recipe, ctx.device, 2)
    phased, _ = timed(pipe, ctx.recipe, ctx.device, phases=True)
    ctx.pipe, ctx.ref = pipe, img
    return {
        "load_s": round(load_s, 2), "load_to_first_step_s": round(load_s + first.get("text_s", 0), 2),
        "notes": notes, "first_run": first, "end_to_end": best, "phased": phased,
    }  # fmt: skip


def floor(ctx: Context) -> dict:
    from anima.weights.random import PRESETS
    from bench.floor import floor_step, forward_tflop

    cfg = PRESETS[ctx.args.preset].dit
    tokens = (ctx.args.size // 16) ** 2
    dev = ctx.device
    full = floor_step(cfg, tokens, torch.bfloat16, device=dev, repeats=3)
    cached = floor_step(cfg, tokens, torch.bfloat16, device=dev, repeats=3, include_context_kv=False)
    tflop = forward_tflop(cfg, tokens, batch=2)
    steps = ctx.args.steps
    return {
        "floor_step_s": round(full, 4), "floor_cached_step_s": round(cached, 4),
        "floor_run_s": round(cached * steps, 3), "tflop_per_step": round(tflop, 2),
        "floor_tflops": round(tflop / full, 1), "attention": _sdpa_kernels(cfg, tokens, dev),
    }  # fmt: skip


def _sdpa_kernels(cfg, tokens: int, device: torch.device) -> dict:
    """Milliseconds per self-attention call of the step's shape, per SDPA kernel torch has here."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(2, cfg.num_heads, tokens, cfg.head_dim, device=device, dtype=torch.bfloat16)
    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
                sync(device)
                t0 = time.perf_counter()
                for _ in range(10):
                    torch.nn.functional.scaled_dot_product_attention(q, q, q)
                sync(device)
            out[name.lower()] = round((time.perf_counter() - t0) / 10 * 1e3, 3)  # ms
        except Exception as e:  # noqa: BLE001 (a kernel missing from this build)
            out[name.lower()] = f"{type(e).__name__}"
    t0 = time.perf_counter()
    for _ in range(10):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    sync(device)
    out["default"] = round((time.perf_counter() - t0) / 10 * 1e3, 3)
    return out


def profile(ctx: Context) -> dict:
    """Where one CFG step's DiT forward spends its time: the top kernels by self device time."""
    dit, size = ctx.pipe.dit, ctx.args.size
    dt = ctx.pipe.dtype
    x = torch.randn(2, 16, 1, size // 8, size // 8, device=ctx.device, dtype=dt)
    sigma = torch.full((2,), 0.5, device=ctx.device)
    c = torch.randn(2, 512, dit.cfg.crossattn_emb_channels, device=ctx.device, dtype=dt)
    cache = dit.prepare_context(c)

    def forward() -> None:
        dit(x, sigma, c, context_cache=cache)

    forward()  # warm-up
    table = top_kernels(forward, ctx.device, rows=25)
    return {"forward_s": round(median_s(forward, ctx.device, n=3), 4), "table": table}


def step_cache(ctx: Context) -> dict:
    out = {}
    for threshold in (0.05, 0.1):
        r, img = timed(ctx.pipe, ctx.recipe.with_(step_cache=threshold), ctx.device)
        out[str(threshold)] = {**r, **diff(img, ctx.ref)}
    return out


def release(ctx: Context) -> dict:
    ctx.pipe = None
    free(ctx.device)
    return {"allocated_gb": gb(torch.cuda.memory_allocated(ctx.device)) if ctx.device.type == "cuda" else 0}


def _load(ctx: Context, **perf):
    hashes = ctx.args.cache / "hashes.json"
    return load(ctx.files, ctx.args.tokenizers, ctx.device, size=ctx.args.size, hash_cache=hashes, **perf)


def _budget(ctx: Context, kernel: str | None = None, **perf) -> dict:
    """A fresh pipeline with `perf`: peak VRAM of its load and of a run after one warm-up run.
    `kernel` forces the matmul of every 8-bit layer (`anima.model.qmatmul`: "dequant" is the path
    8-bit weights took before the int8/fp8 kernels), for an A/B in one run."""
    free(ctx.device)
    reset_peak(ctx.device)
    pipe, notes, load_s = _load(ctx, **perf)
    if kernel is not None:
        from anima.model.quant_linear import QuantLinear

        for m in pipe.dit.modules():
            if isinstance(m, QuantLinear):
                m.kernel = kernel
        notes = [*notes, f"kernel forced: {kernel}"]
    load_peak = peak(ctx.device)[0]
    timed(pipe, ctx.recipe, ctx.device)  # warm-up: streaming's pinned buffers, kernel selection
    r, img = timed(pipe, ctx.recipe, ctx.device, phases=True)
    streaming = getattr(pipe, "block_streamer", None) is not None
    del pipe
    free(ctx.device)
    out = {"notes": notes, "load_s": round(load_s, 2), "load_peak_vram_gb": gb(load_peak), **r}
    return {**out, "streaming": streaming, **diff(img, ctx.ref)}


def budget_8gb(ctx: Context) -> dict:
    return _budget(ctx, vram_budget=8.0)


def budget_4gb_int8(ctx: Context) -> dict:
    return _budget(ctx, vram_budget=4.0, weights="int8")


def streaming(ctx: Context) -> dict:
    """Budgets below the DiT's size, so that blocks are streamed from host memory."""
    return {
        "bf16_3gb": _budget(ctx, vram_budget=3.0),
        "int8_2.2gb": _budget(ctx, vram_budget=2.2, weights="int8"),
    }


def compile_probe(ctx: Context) -> dict:
    from bench.gpu_probe import probe

    out = probe(ctx.files, ctx.args.size, ctx.device)
    free(ctx.device)
    return out


def weights_int8(ctx: Context) -> dict:
    return _budget(ctx, weights="int8")


def weights_fp8(ctx: Context) -> dict:
    return _budget(ctx, weights="fp8")


def weights_8bit_dequant(ctx: Context) -> dict:
    """int8 and fp8 weights with the dequantise + matmul path forced (the kernels' baseline)."""
    return {"int8": _budget(ctx, kernel="dequant", weights="int8"),
            "fp8": _budget(ctx, kernel="dequant", weights="fp8")}  # fmt: skip


def fp16(ctx: Context) -> dict:
    """fp16 compute (GPUs without bf16): finite? Then fp16 accumulation in its matmuls (the flag only
    affects fp16 products, so it is measured here): speed and image difference against plain fp16."""
    free(ctx.device)
    pipe, notes, _ = _load(ctx, dtype="fp16")
    timed(pipe, ctx.recipe, ctx.device)
    plain, img = best_of(pipe, ctx.recipe, ctx.device, 2)
    out = {"notes": notes, "fp16": {**plain, **diff(img, ctx.ref)}}
    matmul = torch.backends.cuda.matmul
    if ctx.device.type == "cuda" and hasattr(matmul, "allow_fp16_accumulation"):
        matmul.allow_fp16_accumulation = True
        try:
            acc, img2 = best_of(pipe, ctx.recipe, ctx.device, 2)
        finally:
            matmul.allow_fp16_accumulation = False
        out["fp16_accumulation"] = {**acc, **diff(img2, img), "vs_bf16": diff(img2, ctx.ref)}
    del pipe
    free(ctx.device)
    return out


def _compiled(ctx: Context, options: dict | None) -> dict:
    """`--compile` (with Inductor `options`): compile and warm-up time, then the best of two runs."""
    from anima.pipeline.placement import compile_dit

    free(ctx.device)
    pipe, notes, load_s = _load(ctx)
    size = ctx.args.size
    t0 = time.perf_counter()
    note = compile_dit(pipe, size, size, 1, options=options)
    compile_s = time.perf_counter() - t0
    r, img = best_of(pipe, ctx.recipe, ctx.device, 2)
    del pipe
    torch._dynamo.reset()
    free(ctx.device)
    return {"notes": [*notes, note], "load_s": round(load_s, 1), "compile_s": round(compile_s, 1), **r,
            **diff(img, ctx.ref)}  # fmt: skip


def compiled(ctx: Context) -> dict:
    return _compiled(ctx, None)


def cli(ctx: Context) -> dict:
    """`anima generate` itself on this device, with `--profile` and an automatic memory budget."""
    import subprocess
    import sys

    out = ctx.args.cache / "cli.png"
    cmd = [
        sys.executable, "-m", "anima", "generate", ctx.recipe.prompt, "--dit", str(ctx.files.dit),
        "--text-encoder", str(ctx.files.text_encoder), "--vae", str(ctx.files.vae),
        "--tokenizer-dir", str(ctx.args.tokenizers), "--device", str(ctx.device),
        "--size", f"{ctx.args.size}x{ctx.args.size}", "--steps", "8", "--seed", "0", "--profile",
        "--vram-budget", "auto", "--no-progress", "-o", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return {
        "rc": p.returncode, "wall_s": round(time.perf_counter() - t0, 2), "png": out.exists(),
        "stderr": p.stderr.splitlines()[-30:], "stdout": p.stdout.splitlines()[-5:],
    }  # fmt: skip


def compiled_tuned(ctx: Context) -> dict:
    """`--compile` with Inductor's coordinate-descent tuning of its own (non-matmul) kernels."""
    return _compiled(ctx, {"coordinate_descent_tuning": True})


def numerics(ctx: Context) -> dict:
    """One DiT forward at 256x256 on the CPU (fp32) and on the GPU (fp32 without TF32, and bf16)."""
    from anima.weights.loading import load_dit
    from anima.weights.random import PRESETS

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 1, 32, 32, generator=g)
    sigma = torch.tensor([0.9, 0.4])
    ctx_in = torch.randn(2, 512, PRESETS[ctx.args.preset].dit.crossattn_emb_channels, generator=g)

    def forward(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        dit, _ = load_dit(ctx.files.dit, device=device, dtype=dtype)
        out = dit(x.to(device, dtype), sigma.to(device), ctx_in.to(device, dtype)).float().cpu()
        del dit
        free(device)
        return out

    ref = forward(torch.device("cpu"), torch.float32)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        gpu32 = forward(ctx.device, torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    gpu16 = forward(ctx.device, torch.bfloat16)

    def rel(a: torch.Tensor) -> float:
        return float(((a - ref).norm() / ref.norm()).item())

    return {"rel_err_gpu_fp32": rel(gpu32), "rel_err_gpu_bf16": rel(gpu16), "ref_std": ref.std().item()}


def diffusers_peer(ctx: Context) -> dict:
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return {"skipped": "diffusers not installed"}
    from bench import assets
    from bench.runners import _cosmos_without_torchvision, load_diffusers

    t0 = time.perf_counter()
    folder = assets.diffusers_folder(ctx.files, ctx.args.tokenizers, ctx.args.cache / "diffusers-full")
    export_s = time.perf_counter() - t0
    free(ctx.device)
    t0 = time.perf_counter()
    pipe = load_diffusers(folder, torch.bfloat16)
    pipe.to(ctx.device)
    sync(ctx.device)
    load_s = time.perf_counter() - t0
    size, steps = ctx.args.size, ctx.args.steps
    runs = []
    with _cosmos_without_torchvision(), torch.inference_mode():
        for _ in range(2):
            sync(ctx.device)
            reset_peak(ctx.device)
            t0 = time.perf_counter()
            pipe(
                prompt=ctx.recipe.prompt, negative_prompt=ctx.recipe.negative_prompt, height=size,
                width=size, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output="images",
            )  # fmt: skip
            sync(ctx.device)
            runs.append(time.perf_counter() - t0)
    peak_alloc = peak(ctx.device)[0]
    del pipe
    free(ctx.device)
    return {
        "export_s": round(export_s, 1), "load_s": round(load_s, 2), "first_run_s": round(runs[0], 3),
        "wall_s": round(min(runs[1:]), 3), "peak_vram_gb": gb(peak_alloc),
    }  # fmt: skip


SECTIONS = [
    ("env", env), ("weights", weights), ("e2e", e2e), ("floor", floor), ("profile", profile),
    ("step_cache", step_cache), ("release", release), ("budget_8gb", budget_8gb),
    ("budget_4gb_int8", budget_4gb_int8), ("streaming", streaming), ("weights_int8", weights_int8),
    ("weights_fp8", weights_fp8), ("weights_8bit_dequant", weights_8bit_dequant), ("fp16", fp16),
    ("cli", cli), ("compile", compiled),
    ("compile_probe", compile_probe), ("numerics", numerics), ("diffusers", diffusers_peer),
    ("compile_tuned", compiled_tuned),
]  # fmt: skip
