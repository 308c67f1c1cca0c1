"""Per-step cost of a ControlNet-LLLite patch: ``python -m bench.lllite``.

One DiT step (a batched cond + uncond forward, as the pipeline runs it) with no patch, with a patch
installed but outside its sigma window, and with it active, timed in interleaved rounds (best of
each), so all three see the same machine load; the ratios against the plain step are the result.
The DiT has the real Anima width (2048, 16 heads, MLP 8192) and a few blocks (the ratio does not
depend on the depth: every block gets the same modules); the patch has the published patches'
shape (conditioning 64 wide, embedding 32, modules 64 wide, all five projections of every block).
Random weights: only the time is measured. The control embedding is computed once per run (and per
size), timed apart.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from anima.model.config import DiTConfig
from anima.model.dit import MiniTrainDIT
from anima.model.lllite import TARGETS, LLLite, LLLiteConfig, ModuleSpec
from anima.workflows.control import ControlPatch, ControlRun


def _random(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(p.shape[-1], 1) ** 0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lllite", description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = p.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cfg = DiTConfig(num_blocks=args.blocks)
    dit = MiniTrainDIT(cfg).to(dtype).eval()
    _random(dit, 0)
    specs = tuple(ModuleSpec(b, t, 64) for b in range(args.blocks) for t in TARGETS)
    lllite = LLLite(LLLiteConfig(3, 64, 32, 1, (), cfg.model_channels, specs)).to(dtype).eval()
    _random(lllite, 1)
    side = args.size // 8
    x = torch.randn(2, 16, 1, side, side, dtype=dtype)
    context = torch.randn(2, 512, cfg.crossattn_emb_channels, dtype=dtype)
    cache = dit.prepare_context(context)
    image = torch.rand(1, args.size, args.size, 3)

    def patch(sigma_start: float) -> ControlRun:
        return ControlRun([ControlPatch(lllite, image, None, 1.0, sigma_start, 0.0)])

    sigma = torch.full((2,), 0.5)
    active, outside = patch(1.0), patch(0.4)  # window [0, 1] contains 0.5; [0, 0.4] does not
    t0 = time.perf_counter()
    with torch.inference_mode():
        active.patches[0].embedding((side, side), dtype)
    embed_s = time.perf_counter() - t0

    def step(run: ControlRun | None):
        def go() -> None:
            with torch.inference_mode():
                if run is None:
                    dit(x, sigma, context, context_cache=cache)
                    return
                with run.installed(dit), run.calling(x, sigma):
                    dit(x, sigma, context, context_cache=cache)

        return go

    fns = {"plain": step(None), "outside_window": step(outside), "active": step(active)}
    fns["plain"]()  # warm-up
    best = {k: float("inf") for k in fns}
    for _ in range(args.rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    result = {
        "size": args.size, "blocks": args.blocks, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "step_s": {k: round(v, 4) for k, v in best.items()},
        "ratio_active": round(best["active"] / best["plain"], 3),
        "ratio_outside_window": round(best["outside_window"] / best["plain"], 3),
        "embedding_once_s": round(embed_s, 4),
        "note": "shared CPU: compare the ratios of one run, not absolute times across runs",
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
