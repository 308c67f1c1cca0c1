"""Interleaved (paired) timing: anima's DiT step, diffusers' DiT step and the matmul floor, round by round.

On a shared CPU the load changes from minute to minute, so comparing phases run one after the other
mostly compares the load. Here the three contenders alternate within each round and the best round
of each is kept, so all three see the same conditions. The same is done for the VAE decode.

anima's step is one batched cond+uncond forward with the cross-attention K/V prepared once (as its
pipeline runs it; the preparation is timed apart as `kv_prepare_s`); diffusers' step is its two
batch-1 forwards (as ClassifierFreeGuidance runs them). Both get the contexts a run of the bench's
prompt pair gives them: as many random rows as the prompts have T5 tokens, zero padding to 512
(anima-spec §3.3); anima keeps that padding as one shared key (`ContextKV`), diffusers attends to
all 512 rows, and both compute the same attention. Weights are touched once before timing so
that page faults of the memory-mapped files are not counted.

anima's CPU pipeline runs each recipe inside `cpu_run_policy` (freed activations stay in the heap
instead of being mapped afresh per op; fp32 linears, and on some CPUs attention, go to oneDNN where
it beats torch's default, `anima.runtime.cpu_gemm`), so its step is timed as a run's second step
(inside the policy, after one step in it) and its VAE decode inside it; diffusers runs as shipped,
and once more in the same way as anima (`diffusers_in_anima_policy_step_s`), to show how much of the
difference is the policy and how much the code. The floors run their bare products in anima's
library; where that is oneDNN, `floor_mkl` is the same floor in torch's default kernels (MKL, flash
attention: what diffusers gets as shipped).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from anima.pipeline.core import cpu_run_policy
from anima.runtime.cpu_gemm import ONEDNN, cpu_products, resolve_cpu_gemm
from bench.floor import floor_step
from bench.runners import _cosmos_without_torchvision


def _touch(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.detach().sum()


def _in_policy(fn):
    """One call inside the pipeline's CPU run policy (a VAE decode: once per run)."""

    def run() -> None:
        with cpu_run_policy():
            fn()

    return run


def _steady_step(fn):
    """A sampling step as the pipeline runs its second and later ones: inside its CPU policy, after a
    step in the same policy has touched the memory the next one reuses (the policy is entered once
    per recipe, and it gives the heap back when it ends, so a lone call would pay first touches that
    a run pays once). Returns the seconds of the second call."""

    def run() -> float:
        with cpu_run_policy():
            fn()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

    return run


def _best(fns: dict, rounds: int) -> dict[str, float]:
    """Best of `rounds` per contender, in turn; a contender that returns seconds is timed by them."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            own = fn()
            times[name].append(own if isinstance(own, float) else time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


@torch.inference_mode()
def paired_dit(
    files, folder: Path | None, dtype: torch.dtype, sizes: list[int], rounds: int,
    context_rows: tuple[int, int],
) -> list[dict]:  # fmt: skip
    """folder None: anima and the floor only (e.g. when two fp32 DiTs do not fit in RAM).
    context_rows: the T5 token counts of the prompt and the negative prompt (`runners.context_rows`)."""
    from diffusers import CosmosTransformer3DModel

    from anima.weights.loading import load_dit

    dit, _adapter = load_dit(files.dit, dtype=dtype)
    _touch(dit)
    theirs = None
    if folder is not None:
        theirs = CosmosTransformer3DModel.from_pretrained(str(folder / "transformer"), torch_dtype=dtype)
        _touch(theirs.eval())
    g = torch.Generator().manual_seed(0)
    return [_dit_case(dit, theirs, size, dtype, rounds, g, context_rows) for size in sizes]


def _dit_case(
    dit, theirs, size: int, dtype: torch.dtype, rounds: int, g: torch.Generator, context_rows: tuple[int, int]
) -> dict:
    x = torch.randn(1, 16, 1, size // 8, size // 8, generator=g)
    pos, neg = (_context(n, dit.cfg.crossattn_emb_channels, g).to(dtype) for n in context_rows)
    both, x2, sigma2 = torch.cat([pos, neg]), torch.cat([x, x]).to(dtype), torch.full((2,), 0.8)
    t0 = time.perf_counter()
    cache = dit.prepare_context(both)
    kv_s = time.perf_counter() - t0
    mask = torch.zeros(1, 1, size, size, dtype=dtype)
    xd, td = x.to(dtype), torch.full((1,), 0.8, dtype=dtype)

    def diffusers_step() -> None:
        for ctx in (pos, neg):
            theirs(
                hidden_states=xd, timestep=td, encoder_hidden_states=ctx, padding_mask=mask, return_dict=False
            )

    tokens = (size // 16) ** 2
    keys = max(context_rows) + 1  # the cross-attention keys anima's step has: the rows + the shared one
    def floor(gemm: str, **kw):
        def run() -> float:
            with cpu_products(gemm):
                return floor_step(dit.cfg, tokens, dtype, repeats=1, context_len=keys, **kw)

        return run

    fns = {
        "anima": _steady_step(lambda: dit(x2, sigma2, both, context_cache=cache)),
        "floor": floor("auto"),
        "floor_cached": floor("auto", include_context_kv=False),
    }
    gemm = resolve_cpu_gemm("auto")
    if gemm == ONEDNN:
        fns["floor_mkl"] = floor("mkl")
    if theirs is not None:
        fns["diffusers"] = diffusers_step
        fns["diffusers_in_anima_policy"] = _steady_step(diffusers_step)
    with _cosmos_without_torchvision():
        best = _best(fns, rounds)
    row = {
        "size": f"{size}x{size}", "rounds": rounds, "context_rows": list(context_rows),
        "cpu_gemm": gemm, "kv_prepare_s": round(kv_s, 3),
        **{f"{k}_step_s": round(v, 3) for k, v in best.items()},
        "anima_vs_floor": round(best["anima"] / best["floor"], 3),
        "anima_vs_floor_cached": round(best["anima"] / best["floor_cached"], 3),
    }  # fmt: skip
    theirs_s = ""
    if theirs is not None:
        row["anima_vs_diffusers"] = round(best["diffusers"] / best["anima"], 3)
        policy_s = best["diffusers_in_anima_policy"]
        row["anima_vs_diffusers_in_anima_policy"] = round(policy_s / best["anima"], 3)
        theirs_s = f"diffusers {best['diffusers']:.2f} s ({policy_s:.2f} s in anima's policy), "
    mkl_s = f", {best['floor_mkl']:.2f} s with MKL" if "floor_mkl" in best else ""
    print(f"  paired {size}x{size} ({gemm}): anima {best['anima']:.2f} s, {theirs_s}"
          f"floor {best['floor']:.2f} s "
          f"({best['floor_cached']:.2f} s w/o context K/V{mkl_s}) per step", flush=True)  # fmt: skip
    return row


def _context(rows: int, channels: int, g: torch.Generator) -> torch.Tensor:
    """[1, 512, channels]: `rows` random rows, then the zero padding the LLM adapter's output gets."""
    ctx = torch.zeros(1, 512, channels)
    ctx[:, :rows] = torch.randn(1, rows, channels, generator=g)
    return ctx


@torch.inference_mode()
def paired_vae(files, folder: Path, dtype: torch.dtype, sizes: list[int], rounds: int) -> list[dict]:
    from diffusers import AutoencoderKLQwenImage

    from anima.weights.loading import load_vae

    ours = load_vae(files.vae, dtype=dtype)
    theirs = AutoencoderKLQwenImage.from_pretrained(str(folder / "vae"), torch_dtype=dtype).eval()
    return [_vae_case(ours, theirs, size, dtype, rounds) for size in sizes]


def _vae_case(ours, theirs, size: int, dtype: torch.dtype, rounds: int) -> dict:
    z = torch.randn(1, 16, 1, size // 8, size // 8, generator=torch.Generator().manual_seed(1))
    fns = {
        "anima": _in_policy(lambda: ours.decode(z)),
        "diffusers": lambda: theirs.decode(z.to(dtype)).sample,
    }
    for fn in fns.values():  # first calls: oneDNN primitive creation
        fn()
    best = _best(fns, rounds)
    print(f"  paired VAE {size}x{size}: anima {best['anima']:.2f} s, diffusers {best['diffusers']:.2f} s")
    return {
        "size": f"{size}x{size}", "anima_vae_s": round(best["anima"], 3),
        "diffusers_vae_s": round(best["diffusers"], 3),
        "vae_speedup": round(best["diffusers"] / best["anima"], 3),
    }  # fmt: skip
