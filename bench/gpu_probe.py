"""Where a DiT forward's time goes on a GPU, eager and compiled (a section of `python -m bench.gpu`).

One CFG step's forward (batch 2) at the run's size, with the context K/V cached as the pipeline does:
eager, each block compiled (what `--compile` does), and the whole forward compiled. Each variant
reports its median forward time, its compile warm-up, its largest difference from eager, and the
device's top kernels.
"""

from __future__ import annotations

import time

import torch

from bench.gpu_measure import free, median_s, sync, top_kernels


def probe(files, size: int, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict:
    from anima.model.dit import fuse_qkv
    from anima.weights.loading import load_dit

    free(device)
    dit, _adapter = load_dit(files.dit, device=device, dtype=dtype)
    for b in dit.blocks:
        fuse_qkv(b.self_attn)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 1, size // 8, size // 8, generator=g).to(device, dtype)
    sigma = torch.tensor([0.7, 0.7], device=device)
    ctx = torch.randn(2, 512, dit.cfg.crossattn_emb_channels, generator=g).to(device, dtype)
    cache = dit.prepare_context(ctx)
    ref = dit(x, sigma, ctx, context_cache=cache)
    out: dict = {}

    def variant(name: str, fn) -> None:
        try:
            t0 = time.perf_counter()
            y = fn()
            sync(device)
            warm = time.perf_counter() - t0
            err = ((y.float() - ref.float()).norm() / ref.float().norm()).item()
            out[name] = {
                "warmup_s": round(warm, 2), "forward_s": round(median_s(fn, device), 4),
                "rel_diff_vs_eager": err, "kernels": top_kernels(fn, device),
            }  # fmt: skip
        except Exception as e:  # noqa: BLE001 (recorded; the other variants still run)
            out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}

    with torch.inference_mode():
        variant("eager", lambda: dit(x, sigma, ctx, context_cache=cache))
        whole = torch.compile(dit)
        variant("compile_whole", lambda: whole(x, sigma, ctx, context_cache=cache))
        torch._dynamo.reset()
        if device.type == "cuda":  # CUDA graphs (cudagraph trees): no launch overhead at all
            graphed = torch.compile(dit, mode="reduce-overhead")
            variant("compile_whole_cudagraphs", lambda: graphed(x, sigma, ctx, context_cache=cache).clone())
            torch._dynamo.reset()
        for b in dit.blocks:
            b.compile()
        variant("compile_blocks", lambda: dit(x, sigma, ctx, context_cache=cache))
        torch._dynamo.reset()
    return out  # the caller frees the model (the lambdas above hold it until then)
