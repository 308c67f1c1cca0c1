"""`python -m bench`: anima vs diffusers' AnimaModularPipeline vs the matmul floor, one process, one run.

    python -m bench                      # bf16 + fp32, 256x256 (3 steps) and 512x512 (2 steps)
    python -m bench --quick              # bf16, 256x256, 2 steps
    python -m bench --dtypes bf16 --sizes 256 --steps 4

Writes bench/results/bench-<time>.json, latest.json and latest.png. The full-size random weights and
their diffusers conversion are cached in ~/.cache/anima-bench (about 13 GB) and reused.

The numbers are only comparable within one run: each phase records the load average and a short
matmul rate (`machine`), because this machine's CPUs are shared.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import time
from pathlib import Path

import torch

from bench import assets
from bench.measure import machine_load, peak_rss_gb, release_memory, reset_peak_rss, rss_gb

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO.parent / "shared" / "fixtures" / "tokenizers"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--sizes", default="256,512", help="square sizes in pixels")
    p.add_argument("--steps", default="256:3,512:2", help="N, or size:N pairs")
    p.add_argument("--cache", type=Path, default=assets.DEFAULT_CACHE)
    p.add_argument("--tokenizers", type=Path, default=TOKENIZERS)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--quick", action="store_true", help="bf16, 256x256, 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.dtypes, args.sizes, args.steps = "bf16", "256", "2"
    return args


def _steps_for(spec: str, size: int) -> int:
    if ":" not in spec:
        return int(spec)
    table = dict(item.split(":") for item in spec.split(","))
    return int(table.get(str(size), 2))


def _phase(name: str, load, run, cases) -> dict:
    """Load a library, run every case, report load time and the phase's peak RSS; then free it all."""
    release_memory()
    reset_peak_rss()
    base = rss_gb()
    t0 = time.perf_counter()
    pipe = load()
    load_s = time.perf_counter() - t0
    out = {"load_s": round(load_s, 2), "rss_gb_before": round(base, 2), "rss_gb_loaded": round(rss_gb(), 2)}
    runs = []
    for case in cases:
        busy = machine_load()
        print(f"  {name} {case.width}x{case.height} x{case.steps} ... ", end="", flush=True)
        r = run(pipe, case)
        r["machine"] = busy
        print(f"{r['per_step_s']:.2f} s/step, vae {r['vae_decode_s']:.2f} s, text {r['text_encode_s']:.2f} s")
        runs.append(r)
    out["runs"] = runs
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    del pipe
    release_memory()
    return out


def main(argv: list[str] | None = None) -> int:
    from anima.config import DiTConfig
    from anima.precision import cpu_has_fast_bf16
    from bench import runners
    from bench.chart import draw_chart
    from bench.floor import floor_step, forward_tflop

    args = _parse(argv)
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    print("preparing weights (cached in", args.cache, ")", flush=True)
    files = assets.random_files(args.cache)
    folder = None
    if not args.skip_diffusers:
        folder = assets.diffusers_folder(files, args.tokenizers, args.cache / "diffusers-full")
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [runners.Case(s, s, _steps_for(args.steps, s)) for s in sizes]
    cfg = DiTConfig()
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "avx512_bf16": cpu_has_fast_bf16(), "torch": torch.__version__,
            "python": platform.python_version(),
            "start": machine_load(), "note": "shared CPU: compare numbers within one run only",
        },
        "phases": {}, "rows": [],
    }  # fmt: skip
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        print(f"[{dname}] anima", flush=True)
        load_a = functools.partial(
            runners.load_anima, files, args.tokenizers, dtype, args.cache / "hashes.json", case=cases[-1]
        )
        ph = {"anima": _phase("anima", load_a, runners.run_anima, cases)}
        if folder is not None:
            print(f"[{dname}] diffusers", flush=True)
            load_d = functools.partial(runners.load_diffusers, folder, dtype)
            ph["diffusers"] = _phase("diffusers", load_d, runners.run_diffusers, cases)
        floors = []
        for case in cases:
            tokens = (case.width // 16) * (case.height // 16)
            full = floor_step(cfg, tokens, dtype)
            cached = floor_step(cfg, tokens, dtype, include_context_kv=False)
            floors.append({
                "size": f"{case.width}x{case.height}", "full_s": round(full, 3), "cached_s": round(cached, 3),
                "tflop_per_step": round(forward_tflop(cfg, tokens, batch=2), 3), "machine": machine_load(),
            })  # fmt: skip
            print(f"  floor {case.width}x{case.height}: {full:.2f} s/step ({cached:.2f} s w/o context K/V)")
        ph["floor"] = floors
        results["phases"][dname] = ph
        results["rows"] += [_row(dname, ph, i) for i in range(len(cases))]
    results["total_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(results, indent=2) + "\n"
    (args.out / f"bench-{stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    draw_chart(results, args.out / "latest.png")
    _print_summary(results)
    return 0


def _row(dname: str, ph: dict, i: int) -> dict:
    a = ph["anima"]["runs"][i]
    fl = ph["floor"][i]
    row = {
        "dtype": dname, "size": a["size"], "steps": a["steps"],
        "anima_per_step_s": a["per_step_s"], "floor_full_s": fl["full_s"], "floor_cached_s": fl["cached_s"],
        "anima_vs_floor_full": round(a["per_step_s"] / fl["full_s"], 3),
        "anima_vs_floor_cached": round(a["per_step_s"] / fl["cached_s"], 3),
        "anima_vae_s": a["vae_decode_s"], "anima_text_s": a["text_encode_s"],
        "anima_load_s": ph["anima"]["load_s"], "anima_peak_rss_gb": ph["anima"]["peak_rss_gb"],
    }  # fmt: skip
    if "diffusers" in ph:
        d = ph["diffusers"]["runs"][i]
        row.update({
            "diffusers_per_step_s": d["per_step_s"], "diffusers_vae_s": d["vae_decode_s"],
            "diffusers_text_s": d["text_encode_s"], "diffusers_load_s": ph["diffusers"]["load_s"],
            "diffusers_peak_rss_gb": ph["diffusers"]["peak_rss_gb"],
            "step_speedup_vs_diffusers": round(d["per_step_s"] / a["per_step_s"], 3),
            "vae_speedup_vs_diffusers": round(d["vae_decode_s"] / a["vae_decode_s"], 3),
        })  # fmt: skip
    return row


def _print_summary(results: dict) -> None:
    print(f"\ntotal {results['total_s']} s")
    for r in results["rows"]:
        line = (
            f"{r['dtype']} {r['size']}: anima {r['anima_per_step_s']:.2f} s/step "
            f"({r['anima_vs_floor_full']:.2f}x floor, {r['anima_vs_floor_cached']:.2f}x cached floor)"
        )
        if "diffusers_per_step_s" in r:
            line += (
                f"; diffusers {r['diffusers_per_step_s']:.2f} s/step -> "
                f"{r['step_speedup_vs_diffusers']:.2f}x; VAE {r['vae_speedup_vs_diffusers']:.2f}x; "
                f"peak RSS {r['anima_peak_rss_gb']:.1f} vs {r['diffusers_peak_rss_gb']:.1f} GB"
            )
        print(line)


if __name__ == "__main__":
    sys.exit(main())
