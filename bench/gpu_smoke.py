"""`python -m bench.gpu_smoke`: every sampler and workflow once on a CUDA GPU, against the CPU.

The tests pin every path on the CPU; on a GPU the sampling state lives on the device, so a tensor
left on the host somewhere (noise, masks, guidance buffers) would only show up there. This runs
each case on the tiny random model (fp32, 64x64, 4 steps) on both devices and reports the largest
pixel difference. Not a test (CI has no GPU): run it when one is lent.

    python -m bench.gpu_smoke --tokenizers DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import traceback
from pathlib import Path

import torch

CASES: dict[str, dict] = {
    **{f"sampler {s}": {"sampler": s} for s in (
        "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde", "dpmpp_2m_sde_gpu",
        "dpmpp_sde_gpu", "er_sde", "res_multistep", "uni_pc", "uni_pc_bh2",
    )},
    "batch 2": {"batch_size": 2},
    "cfg-zero-star": {"guidance": "cfg-zero-star", "cfg_zero_init_steps": 1},
    "apg": {"guidance": "apg", "apg_eta": 0.5, "apg_momentum": -0.5, "apg_norm_threshold": 10.0},
    "rescale-cfg": {"guidance": "rescale-cfg"},
    "nag": {"nag_scale": 3.0},
    "variation": {"variation_seed": 5, "variation_strength": 0.3},
    "prompt editing": {"prompt": "[red:blue:0.5] circle"},
    "hires latent": {"hires_scale": 1.5, "hires_steps": 2},
    "hires lanczos": {"hires_scale": 1.5, "hires_steps": 2, "hires_upscaler": "lanczos"},
    "tiled vae": {"tiled_vae": "on"},
    "img2img": {"denoise": 0.6, "_init": True},
    "inpaint": {"_init": True, "_mask": True},
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__.splitlines()[0])
    repo = Path(__file__).resolve().parents[1]
    p.add_argument("--tokenizers", type=Path, default=repo.parent / "shared" / "fixtures" / "tokenizers")
    p.add_argument("--out", type=Path, default=repo / "bench" / "results")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    from anima.pipeline import Pipeline
    from anima.weights.random import make_random

    files = make_random("tiny", Path(tempfile.mkdtemp()) / "tiny")

    def pipe_on(device: str) -> Pipeline:
        return Pipeline.from_files(
            files.dit, files.text_encoder, files.vae, tokenizer_dir=args.tokenizers, device=device,
            dtype=torch.float32,
        )  # fmt: skip

    pipes = {"cpu": pipe_on("cpu"), args.device: pipe_on(args.device)}
    g = torch.Generator().manual_seed(0)
    init = torch.rand(1, 64, 64, 3, generator=g)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1.0
    results: dict = {}
    for name, case in CASES.items():
        settings = {"prompt": "red circle", "width": 64, "height": 64, "steps": 4, "seed": 3, "cfg": 4.0}
        settings.update({k: v for k, v in case.items() if not k.startswith("_")})
        kw = {"init_image": init if case.get("_init") else None, "mask": mask if case.get("_mask") else None}
        try:
            t0 = time.perf_counter()
            images = {d: pipe(**settings, **kw).images for d, pipe in pipes.items()}
            a, b = images["cpu"], images[args.device]
            results[name] = {
                "max_abs_diff": round((a - b).abs().max().item(), 5), "shape": list(b.shape),
                "finite": bool(torch.isfinite(b).all()), "s": round(time.perf_counter() - t0, 2),
            }  # fmt: skip
        except Exception as e:  # noqa: BLE001 (recorded; the next case still runs)
            results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-1500:]}
        print(name, {k: v for k, v in results[name].items() if k != "traceback"}, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-smoke-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    bad = [n for n, r in results.items() if "error" in r or r["max_abs_diff"] > 0.02 or not r["finite"]]
    agree = f"{len(results) - len(bad)}/{len(results)} cases agree"
    print(f"wrote {path}; {agree}" + (f"; not: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
