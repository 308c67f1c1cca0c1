"""`python -m bench`: anima vs diffusers' AnimaModularPipeline vs the matmul floor, one process, one run.

    python -m bench                      # bf16 + fp32; pipelines at 256x256, steps at 256 and 512
    python -m bench --quick              # bf16 only, 256x256
    python -m bench --dtypes bf16 --sizes 256 --steps 3

Where torch sees a CUDA GPU this runs `python -m bench.gpu` instead (1024x1024, 30 steps; `--cpu`
keeps the CPU benchmark). On a CPU, two parts per dtype:

1. end to end (`--e2e-size`, `--steps`): each library's whole text-to-image run, one library after
   the other: load time, text encoding, per-step time, VAE decode, peak RSS.
2. paired (`--sizes`, `--rounds`): anima's DiT step, diffusers' DiT step and the bare matmul floor,
   then both VAE decodes, alternating round by round (bench/paired.py). These give the speed ratios:
   on a shared CPU, phases run minutes apart see different loads.

Writes bench/results/bench-<time>.json, latest.json and latest.png. The full-size random weights and
their diffusers conversion are cached in ~/.cache/anima-bench (about 13 GB) and reused.
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
from bench.measure import cpu_isa, machine_load, peak_rss_gb, release_memory, reset_peak_rss, rss_gb

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO.parent / "shared" / "fixtures" / "tokenizers"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="bf16,fp32")
    p.add_argument("--sizes", default="256,512", help="square sizes of the paired step/VAE timings")
    p.add_argument("--e2e-size", type=int, default=256, help="square size of the end-to-end runs")
    p.add_argument("--steps", type=int, default=2, help="sampling steps of the end-to-end runs")
    p.add_argument(
        "--rounds", type=int, default=1, help="rounds of the paired timings, best kept (2 on a busy machine)"
    )
    p.add_argument("--cache", type=Path, default=assets.DEFAULT_CACHE)
    p.add_argument("--tokenizers", type=Path, default=TOKENIZERS)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--skip-diffusers", action="store_true")
    p.add_argument("--quick", action="store_true", help="bf16 only, 256x256")
    p.add_argument("--cpu", action="store_true", help="the CPU benchmark even where a CUDA GPU is present")
    args = p.parse_args(argv)
    if args.quick:
        args.dtypes, args.sizes = "bf16", "256"
    return args


def _phase(name: str, load, run, cases, rerun=None) -> dict:
    """Load a library, run every case, report load time and the phase's peak RSS; then free it all.
    `rerun(pipe, case)`: the first case again with another seed, reported as `rerun`."""
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
    if rerun is not None:
        out["rerun"] = again = rerun(pipe, cases[0])
        print(f"  {name} again, another seed: first step after {again['to_first_step_s']:.2f} s, "
              f"{again['end_to_end_s']:.2f} s in all")  # fmt: skip
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    del pipe
    release_memory()
    return out


def _fits_two_dits(dtype: torch.dtype) -> bool:
    """Two full DiTs (2 x 3.9 GB in bf16, 2 x 7.8 GB in fp32) plus headroom in available RAM?"""
    need = 2 * 1.96e9 * torch.empty((), dtype=dtype).element_size() + 3e9
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 > need
    except OSError:
        pass
    return False


def main(argv: list[str] | None = None) -> int:
    from anima.runtime.precision import cpu_has_fast_bf16
    from bench import paired, runners
    from bench.chart import draw_chart

    args = _parse(argv)
    if torch.cuda.is_available() and not args.cpu:  # on a GPU: 1024x1024, 30 steps (bench/gpu.py)
        from bench import gpu

        return gpu.main(["--tokenizers", str(args.tokenizers), "--out", str(args.out)])
    torch.set_grad_enabled(False)
    started = time.perf_counter()
    isa = cpu_isa()
    print(f"CPU: {isa['model']}; ATen {isa['aten_capability']}, flags {' '.join(isa['flags'])}; "
          f"int8 weights: {isa['int8_matmul']}; fp32 linears: {isa['fp32_matmul']}; "
          f"attention: {isa['attention']}", flush=True)  # fmt: skip
    print("preparing weights (cached in", args.cache, ")", flush=True)
    files = assets.random_files(args.cache)
    folder = None
    if not args.skip_diffusers:
        folder = assets.diffusers_folder(files, args.tokenizers, args.cache / "diffusers-full")
    sizes = [int(s) for s in args.sizes.split(",")]
    e2e = [runners.Case(args.e2e_size, args.e2e_size, args.steps)]
    results: dict = {
        "machine": {
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "avx512_bf16": cpu_has_fast_bf16(), "isa": cpu_isa(), "torch": torch.__version__,
            "python": platform.python_version(),
            "start": machine_load(), "note": "shared CPU: ratios come from the paired timings",
        },
        "phases": {}, "rows": [],
    }  # fmt: skip
    for dname in args.dtypes.split(","):
        dtype = DTYPES[dname]
        ph: dict = {}
        print(f"[{dname}] end to end, anima", flush=True)
        load_a = functools.partial(
            runners.load_anima, files, args.tokenizers, dtype, args.cache / "hashes.json", case=e2e[0]
        )
        ph["anima"] = _phase("anima", load_a, runners.run_anima, e2e, rerun=runners.rerun_anima)
        if folder is not None:
            print(f"[{dname}] end to end, diffusers", flush=True)
            load_d = functools.partial(runners.load_diffusers, folder, dtype)
            ph["diffusers"] = _phase("diffusers", load_d, runners.run_diffusers, e2e)
        print(f"[{dname}] paired steps", flush=True)
        release_memory()
        with_theirs = folder if folder is not None and _fits_two_dits(dtype) else None
        if folder is not None and with_theirs is None:
            print("  (not enough free RAM for both DiTs: diffusers' step is taken from the end-to-end run)")
        ph["paired_steps"] = paired.paired_dit(
            files, with_theirs, dtype, sizes, args.rounds, runners.context_rows(args.tokenizers)
        )
        release_memory()
        if folder is not None:
            ph["paired_vae"] = paired.paired_vae(files, folder, dtype, sizes, args.rounds)
            release_memory()
        ph["machine_after"] = machine_load()
        results["phases"][dname] = ph
        results["rows"] += [_row(dname, ph, i) for i in range(len(sizes))]
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
    st = ph["paired_steps"][i]
    row = {
        "dtype": dname, "size": st["size"],
        "anima_per_step_s": st["anima_step_s"], "floor_full_s": st["floor_step_s"],
        "floor_cached_s": st["floor_cached_step_s"], "anima_vs_floor_full": st["anima_vs_floor"],
        "anima_vs_floor_cached": st["anima_vs_floor_cached"], "cpu_gemm": st["cpu_gemm"],
    }  # fmt: skip
    if "floor_mkl_step_s" in st:
        row["floor_full_mkl_s"] = st["floor_mkl_step_s"]
    if "diffusers_step_s" in st:
        row["diffusers_per_step_s"] = st["diffusers_step_s"]
        row["step_speedup_vs_diffusers"] = st["anima_vs_diffusers"]
        row["diffusers_in_anima_policy_per_step_s"] = st["diffusers_in_anima_policy_step_s"]
        row["step_speedup_vs_diffusers_in_anima_policy"] = st["anima_vs_diffusers_in_anima_policy"]
    if "paired_vae" in ph:
        v = ph["paired_vae"][i]
        row.update(
            anima_vae_s=v["anima_vae_s"], diffusers_vae_s=v["diffusers_vae_s"], vae_speedup=v["vae_speedup"]
        )
    a = ph["anima"]
    row.update(
        anima_load_s=a["load_s"],
        anima_peak_rss_gb=a["peak_rss_gb"],
        anima_text_s=a["runs"][0]["text_encode_s"],
        anima_rerun_to_first_step_s=a["rerun"]["to_first_step_s"],
    )
    if "diffusers" in ph:
        d = ph["diffusers"]
        row.update(
            diffusers_load_s=d["load_s"], diffusers_peak_rss_gb=d["peak_rss_gb"],
            diffusers_text_s=d["runs"][0]["text_encode_s"],
        )  # fmt: skip
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
                f"; diffusers {r['diffusers_per_step_s']:.2f} s/step -> {r['step_speedup_vs_diffusers']:.2f}x"
                f" ({r['step_speedup_vs_diffusers_in_anima_policy']:.2f}x in anima's policy)"
            )
        if "vae_speedup" in r:
            line += f"; VAE {r['vae_speedup']:.2f}x"
        if "diffusers_peak_rss_gb" in r:
            line += f"; peak RSS {r['anima_peak_rss_gb']:.1f} vs {r['diffusers_peak_rss_gb']:.1f} GB"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
