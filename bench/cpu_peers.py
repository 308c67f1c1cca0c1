"""`python -m bench.cpu_peers`: anima fp32 / bf16 / int8 against stable-diffusion.cpp q8_0 on a CPU.

    python -m bench.cpu_peers                          # 256x256, 2 steps, one round
    python -m bench.cpu_peers --sizes 256,512 --rounds 2 --sd-cli /path/to/sd-cli
    ANIMA_BENCH_SD_CLI=/path/to/sd-cli python -m bench.cpu_peers --modes fp32,int8

Every run is a fresh process (so its peak RSS is its own: ``ru_maxrss`` from ``wait4``) on the same
full-size random weights, prompt pair, size, steps, CFG 4 and Euler: anima through `Pipeline` as
``anima generate`` sets it up, sd.cpp through its ``sd-cli`` (`bench.sdcpp`; skipped, with the
reason recorded, when none is given). Runs are interleaved: each round runs every contender once,
in order, and the best round is kept per contender, so all of them see the same machine load.

Modes: ``fp32``, ``bf16``, ``int8`` (``--weights int8`` with the compute dtype anima picks here),
``fp32+int8`` / ``bf16+int8`` (compute dtype explicit), ``<mode>@<GB>`` (with ``--ram-budget``).
Image quality: PSNR of each int8 image against the fp32 image of the same seed (the first mode that
has no int8 is the reference). Results: bench/results/cpu-peers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import assets, sdcpp
from bench.measure import cpu_isa, machine_load
from bench.runners import Case

REPO = Path(__file__).resolve().parents[1]
TOKENIZERS = REPO.parent / "shared" / "fixtures" / "tokenizers"
SDCPP = "sdcpp-q8_0"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_peers", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--modes", default="fp32,bf16,int8,fp32+int8")
    p.add_argument("--sd-cli", default=None, help=f"stable-diffusion.cpp's sd-cli (or ${sdcpp.ENV})")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--cache", type=Path, default=assets.DEFAULT_CACHE)
    p.add_argument("--tokenizers", type=Path, default=TOKENIZERS)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # mode; internal
    p.add_argument("--child-size", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_mode(mode: str) -> tuple[str, str | None, float | None]:
    """'fp32' / 'int8' / 'bf16+int8' / 'fp32@6' -> (dtype name or 'auto', weights, RAM budget GB)."""
    mode, _, budget = mode.partition("@")
    parts = mode.split("+")
    dtype = next((p for p in parts if p in ("fp32", "bf16")), "auto")
    weights = "int8" if "int8" in parts else None
    return dtype, weights, float(budget) if budget else None


# -- one anima run, in its own process -------------------------------------------------------------


def _child(args: argparse.Namespace) -> int:
    from anima.runtime.precision import parse_dtype, resolve_dtype
    from bench import runners

    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    dtype_name, weights, budget = parse_mode(args.child)
    dtype = (
        resolve_dtype(dtype_name, torch.device("cpu")) if dtype_name == "auto" else parse_dtype(dtype_name)
    )
    case = Case(args.child_size, args.child_size, args.steps)
    files = assets.random_files(args.cache)
    t0 = time.perf_counter()
    pipe = runners.load_anima(
        files, args.tokenizers, dtype, args.cache / "hashes.json", case=case, weights=weights,
        ram_budget=budget,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    out, images = runners.run_anima_images(pipe, case)
    out.update(mode=args.child, dtype=str(dtype).removeprefix("torch."), load_s=round(load_s, 2),
               notes=pipe.notes, weights_matmul=pipe.weights_matmul)  # fmt: skip
    torch.save(images, args.child_out.with_suffix(".pt"))
    args.child_out.write_text(json.dumps(out))
    return 0


def _run_anima(args, mode: str, size: int, work: Path) -> dict:
    out = work / f"{mode.replace('+', '_').replace('@', '_')}-{size}.json"
    cmd = [sys.executable, "-m", "bench.cpu_peers", "--child", mode, "--child-size", str(size),
           "--child-out", str(out), "--steps", str(args.steps), "--threads", str(args.threads),
           "--cache", str(args.cache), "--tokenizers", str(args.tokenizers)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not out.exists():
        return {"mode": mode, "error": log[-1500:]}
    result = json.loads(out.read_text())
    result["process_peak_rss_gb"] = round(usage.ru_maxrss / 2**20, 2)
    result["process_s"] = round(time.perf_counter() - t0, 1)
    result["images"] = str(out.with_suffix(".pt"))
    return result


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two float images in [0, 1] (after 8-bit rounding, as saved)."""
    a8, b8 = (a.clamp(0, 1) * 255).round(), (b.clamp(0, 1) * 255).round()
    mse = ((a8 - b8) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


# -- the driver ------------------------------------------------------------------------------------


def _best(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r and r.get("per_step_s") is not None]
    if not ok:
        return runs[-1] if runs else {}
    best = dict(min(ok, key=lambda r: r["per_step_s"]))
    best["per_step_s_rounds"] = [r["per_step_s"] for r in ok]
    for k in ("text_encode_s", "vae_decode_s", "load_s"):
        values = [r[k] for r in ok if r.get(k) is not None]
        if values:
            best[k] = min(values)
    return best


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        return _child(args)
    modes = [m for m in args.modes.split(",") if m]
    sizes = [int(s) for s in args.sizes.split(",")]
    files = assets.random_files(args.cache)
    sd_cli, why = sdcpp.find_sd_cli(args.sd_cli)
    gguf = sdcpp.q8_0_dit(sd_cli, files.dit, args.cache) if sd_cli else None
    isa = cpu_isa()
    print(f"CPU: {isa['model']}; ATen {isa['aten_capability']}; flags {' '.join(isa['flags'])}; "
          f"int8: {isa['int8_matmul']}; sd.cpp: {sd_cli or why}", flush=True)  # fmt: skip
    results: dict = {
        "machine": {"isa": isa, "threads": args.threads, "torch": torch.__version__, "start": machine_load(),
                    "note": "shared CPU: compare within one run; rounds interleave the contenders"},
        "steps": args.steps, "sd_cli": str(sd_cli) if sd_cli else None, "sd_cli_skipped": why or None,
        "sizes": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="anima-cpu-peers-") as tmp:
        work = Path(tmp)
        for size in sizes:
            runs: dict[str, list[dict]] = {m: [] for m in modes + ([SDCPP] if sd_cli else [])}
            for r in range(args.rounds):
                for name in runs:
                    busy = machine_load()
                    print(f"  {size}x{size} round {r + 1}: {name} ... ", end="", flush=True)
                    if name == SDCPP:
                        png = work / f"sdcpp-{size}-{r}.png"
                        res = sdcpp.run(sd_cli, gguf, files, Case(size, size, args.steps), png, args.threads)
                    else:
                        res = _run_anima(args, name, size, work)
                    res["machine"] = busy
                    runs[name].append(res)
                    print(_line(res), flush=True)
            results["sizes"][str(size)] = _summary(runs, modes)
    results["machine"]["end"] = machine_load()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cpu-peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    for size, s in results["sizes"].items():
        print(f"{size}x{size}: " + "; ".join(f"{k} {v}" for k, v in s["ratios"].items()))
    return 0


def _line(res: dict) -> str:
    if "error" in res:
        return "failed: " + res["error"].strip().splitlines()[-1][:200]
    rss = res.get("process_peak_rss_gb", res.get("peak_rss_gb"))
    return (f"{res.get('per_step_s')} s/step, text {res.get('text_encode_s')} s, "
            f"vae {res.get('vae_decode_s')} s, load {res.get('load_s')} s, peak RSS {rss} GB")  # fmt: skip


def _summary(runs: dict[str, list[dict]], modes: list[str]) -> dict:
    best = {name: _best(rs) for name, rs in runs.items()}
    ref_mode = next((m for m in modes if parse_mode(m)[1] is None and parse_mode(m)[0] == "fp32"), None)
    ref = best.get(ref_mode, {}).get("images") if ref_mode else None
    ratios: dict[str, str] = {}
    for name, b in best.items():
        if name == ref_mode or "images" not in b or ref is None:
            continue
        b["psnr_vs_fp32_db"] = round(psnr(torch.load(b["images"]), torch.load(ref)), 2)
    for b in best.values():
        b.pop("images", None)
        b.pop("dit_call_s", None)
    peer = best.get(SDCPP, {})
    for name, b in best.items():
        if name == SDCPP or b.get("per_step_s") is None:
            continue
        if ref_mode and best[ref_mode].get("per_step_s") and name != ref_mode:
            ratios[f"{name} vs {ref_mode} per step"] = (
                f"{best[ref_mode]['per_step_s'] / b['per_step_s']:.2f}x"
            )
        if peer.get("per_step_s"):
            ratios[f"{name} vs sd.cpp per step"] = f"{peer['per_step_s'] / b['per_step_s']:.2f}x"
            rss = b.get("process_peak_rss_gb")
            if rss and peer.get("peak_rss_gb"):
                ratios[f"{name} peak RSS vs sd.cpp"] = f"{rss:.2f} / {peer['peak_rss_gb']:.2f} GB"
        if "psnr_vs_fp32_db" in b:
            ratios[f"{name} PSNR vs fp32"] = f"{b['psnr_vs_fp32_db']} dB"
    return {"best": best, "runs": runs, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(main())
