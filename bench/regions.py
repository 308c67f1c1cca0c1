"""Per-step overhead of regional prompts: ``python -m bench.regions [--size 256] [--steps 4]``.

One process, one pipeline (the bundled tiny fixture model: full-size weights are too slow on a shared
CPU), the same seed,
sampler (Euler) and CFG 4, timed interleaved per round: plain prompt; two regions (left/right
halves, base weight 0.2); and the same with NAG. Prints seconds per step and the ratios to the plain
run measured in the same round (the CPU is shared: only ratios within one run mean anything).
Regions cost: the cond forward runs apart from the uncond one (plain CFG batches them), and each
block attends to the base context with every token plus each region's context with its tokens.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = p.parse_args()

    from anima.pipeline import Pipeline
    from anima.recipe import Recipe, Region

    w = args.shared / "fixtures" / "anima-tiny" / "weights"
    pipe = Pipeline.from_files(
        w / "anima_tiny_dit.safetensors", w / "qwen3_tiny_te.safetensors", w / "wan21_tiny_vae.safetensors",
        tokenizer_dir=args.shared / "fixtures" / "tokenizers", device="cpu", dtype="fp32",
    )  # fmt: skip
    size = {"width": args.size, "height": args.size}
    base = Recipe("2girls, park", **size, steps=args.steps, sampler="euler", seed=1)
    halves = (Region("red hair", rect=(0, 0, 0.5, 1)), Region("blue hair", rect=(0.5, 0, 1, 1)))
    cases = {
        "plain": base,
        "2 regions": base.with_(regions=halves),
        "2 regions + NAG": base.with_(regions=halves, nag_scale=3.0),
        "plain + NAG": base.with_(nag_scale=3.0),
    }
    best: dict[str, float] = {}
    # Whole runs / steps (text encoding and the VAE included, the same for every case); round 0 warms up.
    for r in range(args.rounds + 1):
        for name, recipe in cases.items():
            t0 = time.perf_counter()
            pipe.generate(recipe)
            dt = (time.perf_counter() - t0) / args.steps
            if r:
                best[name] = min(best.get(name, dt), dt)
    print(f"tiny fixture model, {args.size}x{args.size}, {args.steps} steps, CFG 4, best of {args.rounds}")
    for name, dt in best.items():
        peer = "plain + NAG" if "NAG" in name else "plain"
        print(f"  {name:18s} {dt * 1000:8.1f} ms/step   x{dt / best[peer]:.2f} vs {peer}")


if __name__ == "__main__":
    main()
