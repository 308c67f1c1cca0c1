"""`python -m bench.gpu`: anima on a CUDA GPU at 1024x1024, 30 steps, CFG 4 (issue 4's GPU targets).

    python -m bench.gpu --tokenizers DIR --out DIR [--deadline-s 420] [--steps 30] [--size 1024]

Sections, each guarded (a failure is recorded with its traceback and the rest go on) and skipped once
the deadline has passed; the JSON is rewritten after every section, so a run cut short still reports:

- env, weights (full-size random files), load (warm page cache -> first denoising step)
- e2e: bf16 as `anima generate` sets it up, after one warm-up run; phases; peak VRAM
- floor: every matmul and attention of one step as bare torch calls (`bench.floor`), and SDPA kernels
- fp16 accumulation, step cache, compile: speed and image difference against the e2e image
- int8 / fp8 weights (int8 / fp8 tensor-core matmuls where the GPU has them), the same with the
  dequantise + matmul path forced; `--vram-budget 8` (bf16) and `--vram-budget 4` with int8: peak VRAM
- fp16 compute (finite?), GPU vs CPU numerics of one DiT forward, diffusers' pipeline when installed

Timings end in `torch.cuda.synchronize`. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


class Run:
    """The results dict, its deadline and its JSON file."""

    def __init__(self, out: Path, deadline_s: float) -> None:
        self.t0 = time.perf_counter()
        self.deadline = deadline_s
        self.path = out / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
        self.results: dict = {"sections": {}}
        out.mkdir(parents=True, exist_ok=True)

    def section(self, name: str, fn: Callable[[], dict]) -> dict | None:
        elapsed = time.perf_counter() - self.t0
        if elapsed > self.deadline:
            self.results["sections"][name] = {"skipped": f"deadline ({elapsed:.0f} s)"}
            print(f"[{name}] skipped: deadline", flush=True)
            return None
        print(f"[{name}] ...", flush=True)
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as e:  # noqa: BLE001 (recorded, the next section still runs)
            r = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        r["section_s"] = round(time.perf_counter() - t0, 2)
        self.results["sections"][name] = r
        self.results["total_s"] = round(time.perf_counter() - self.t0, 1)
        self.path.write_text(json.dumps(self.results, indent=2) + "\n")
        print(f"[{name}] {json.dumps({k: v for k, v in r.items() if k != 'traceback'})[:1500]}", flush=True)
        return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--tokenizers", type=Path, default=REPO.parent / "shared" / "fixtures" / "tokenizers")
    p.add_argument("--cache", type=Path, default=Path("/tmp/anima-bench"))
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--deadline-s", type=float, default=420, help="start no section after this many s")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out")
    p.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a dry run of the script)")
    p.add_argument("--preset", default="full", help="random weights: full, or tiny for a dry run")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m bench.gpu needs a CUDA GPU (python -m bench is the CPU benchmark)")
    from bench import gpu_sections
    from bench.gpu_measure import recipe

    run = Run(args.out, args.deadline_s)
    ctx = gpu_sections.Context(args=args, device=device, recipe=recipe(args.size, args.steps))
    skip, only = (set(filter(None, a.split(","))) for a in (args.skip, args.only))
    with torch.no_grad():  # scoped, not process-wide: the script's main is also called from a test
        for name, fn in gpu_sections.SECTIONS:
            if name not in skip and (not only or name in only):
                run.section(name, lambda fn=fn: fn(ctx))
    from bench.chart import draw_gpu_chart

    chart = draw_gpu_chart(run.results, run.path.with_suffix(".png"))
    print(f"wrote {run.path} and {chart.name} ({run.results['total_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
