"""`python -m bench.ray_serve`: what `anima serve --ray` costs and gains, on this machine's CPUs.

    python -m bench.ray_serve                 # overhead (1-step jobs) + throughput (long jobs)
    python -m bench.ray_serve --long-steps 60 --jobs 12 --rounds 2

One process, one local Ray cluster (2 CPUs), the bundled demo model at 64x64, torch at 1 thread
in the server and in every actor (so 1 vs 2 workers compares 1 vs 2 cores, not thread counts).
Jobs go through the real HTTP API of an in-process server (`create_app` under uvicorn); times
are the store's own `started` / `finished` stamps plus the client's submit-to-done latency.

1. Per-job dispatch overhead: the same short jobs one at a time (submit, wait, next) on the local
   worker and on one Ray worker; overhead = median Ray latency - median local latency. And the
   bare Ray round trip: one 1-step render through `RemoteService.run` vs `PipelineService.run`.
2. Throughput: `--jobs` long jobs queued at once on 1 Ray worker, then on 2; ratio = jobs/s with
   2 workers over jobs/s with 1 (the local worker's jobs/s is shown too).

Each phase records the 1-minute load average before and after (the CPUs are shared: compare
within one run). Writes bench/results/ray_serve-<time>.json and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

RESULTS = Path(__file__).parent / "results"


def _service():
    from anima import demo
    from anima.pipeline import RunOptions
    from anima.server.service import PipelineService
    from anima.weights.discovery import ModelSet

    d = demo.default_model()
    ms = ModelSet(d.name, d.dit, d.text_encoder, d.vae, d.qwen_tokenizer, d.t5_tokenizer, demo.SOURCE)
    return PipelineService([ms], options=RunOptions(device="cpu", dtype="fp32"))


def _recipe(i: int, steps: int) -> dict:
    return {"prompt": f"red circle, blue background {i}", "negative_prompt": "", "size": "64x64",
            "steps": steps, "seed": i}  # fmt: skip


class _Server:
    """An in-process server (local worker, or `workers` Ray actors) and an HTTP client to it."""

    def __init__(self, data: Path, workers: int | None) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from server_support import LiveServer

        from anima.server.app import create_app
        from anima.server.ray_pool import RaySettings
        from anima.server.security import Limits

        ray = RaySettings(workers=workers, threads=1) if workers else None
        app = create_app(_service(), data_dir=data, limits=Limits(max_steps=2000), preview_every=0, ray=ray)
        self.live = LiveServer(app)

    def __enter__(self):
        self.live.__enter__()
        self.client = httpx.Client(base_url=self.live.url, timeout=600)
        deadline = time.monotonic() + 300
        while any(w["state"] != "idle" for w in self.client.get("/api/workers").json()["workers"]):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.1)
        self.submit(_recipe(0, 1))  # warm-up: the first job pays for first-touch costs
        self.wait(self.client.get("/api/jobs").json()["items"][0]["id"])
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.live.__exit__(*exc)

    def submit(self, recipe: dict) -> str:
        r = self.client.post("/api/jobs", json={"recipe": recipe})
        r.raise_for_status()
        return r.json()["id"]

    def wait(self, job_id: str) -> dict:
        while True:
            job = self.client.get(f"/api/jobs/{job_id}").json()
            if job["status"] not in ("queued", "running"):
                if job["status"] != "done":
                    raise RuntimeError(f"job {job_id}: {job['status']} {job['error']}")
                return job
            time.sleep(0.005)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def overhead(data: Path, workers: int | None, n: int) -> dict:
    """Short jobs one at a time: client latency and the server's run time (start to finish)."""
    with _Server(data, workers) as s:
        load0 = _load()
        latency, run = [], []
        for i in range(n):
            t0 = time.perf_counter()
            job = s.wait(s.submit(_recipe(1000 + i, 1)))
            latency.append(time.perf_counter() - t0)
            run.append(job["finished"] - job["started"])
        return {"median_latency_s": statistics.median(latency), "median_run_s": statistics.median(run),
                "jobs": n, "load_before": load0, "load_after": _load()}  # fmt: skip


def bare_call(n: int) -> dict:
    """The same 1-step render through `PipelineService.run` here and `RemoteService.run` on one
    actor, no server around them: the Ray round trip alone."""
    import ray

    from anima.recipe import Recipe
    from anima.server.ray_actor import RemoteService, ServeActor

    svc = _service()
    name = svc.current_model()
    actor = ray.remote(num_cpus=1, max_concurrency=2)(ServeActor).remote(svc.spec(), 1, name)
    ray.get(actor.info.remote())
    remote = RemoteService(ray, actor, lambda: svc.spec().models, lambda model, model_hash: None)
    recipe = Recipe.make("red circle", width=64, height=64, steps=1, seed=1, negative_prompt="", model=name)
    svc.load(name)
    times: dict[str, list[float]] = {"local": [], "remote": []}
    for _ in range(n):
        for key, service in (("local", svc), ("remote", remote)):
            t0 = time.perf_counter()
            service.run(recipe, progress=lambda step, total: None)
            times[key].append(time.perf_counter() - t0)
    ray.kill(actor)
    out = {f"median_{k}_s": statistics.median(v) for k, v in times.items()}
    return {**out, "overhead_s": out["median_remote_s"] - out["median_local_s"], "load": _load()}


def throughput(data: Path, workers: int | None, n: int, steps: int) -> dict:
    with _Server(data, workers) as s:
        load0 = _load()
        t0 = time.perf_counter()
        ids = [s.submit(_recipe(i, steps)) for i in range(n)]
        jobs = [s.wait(i) for i in ids]
        wall = time.perf_counter() - t0
        span = max(j["finished"] for j in jobs) - min(j["started"] for j in jobs)
        per_job = statistics.median(j["finished"] - j["started"] for j in jobs)
        return {"jobs": n, "steps": steps, "wall_s": wall, "span_s": span, "jobs_per_s": n / wall,
                "median_job_s": per_job, "load_before": load0, "load_after": _load()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short-jobs", type=int, default=20, help="1-step jobs for the overhead (default 20)")
    p.add_argument("--jobs", type=int, default=12, help="long jobs for the throughput (default 12)")
    p.add_argument("--long-steps", type=int, default=80, help="steps of a long job (default 80)")
    p.add_argument("--rounds", type=int, default=1, help="throughput rounds (best of)")
    args = p.parse_args(argv)
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    out: dict = {"machine": {"cpus": os.cpu_count(), "torch_threads": 1, "load_start": _load()}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            out["overhead_local"] = overhead(root / "ol", None, args.short_jobs)
            out["overhead_ray1"] = overhead(root / "or", 1, args.short_jobs)
            out["bare_call"] = bare_call(args.short_jobs)
            for r in range(args.rounds):
                for name, workers in (("local", None), ("ray1", 1), ("ray2", 2)):
                    res = throughput(root / f"t{name}{r}", workers, args.jobs, args.long_steps)
                    best = out.get(f"throughput_{name}")
                    if best is None or res["jobs_per_s"] > best["jobs_per_s"]:
                        out[f"throughput_{name}"] = res
    finally:
        ray.shutdown()
    ol, o1 = out["overhead_local"], out["overhead_ray1"]
    out["dispatch_overhead_s"] = o1["median_latency_s"] - ol["median_latency_s"]
    out["dispatch_overhead_run_s"] = o1["median_run_s"] - ol["median_run_s"]
    t1, t2, tl = out["throughput_ray1"], out["throughput_ray2"], out["throughput_local"]
    out["ratio_2_vs_1_workers"] = t2["jobs_per_s"] / t1["jobs_per_s"]
    out["ratio_1_worker_vs_local"] = t1["jobs_per_s"] / tl["jobs_per_s"]
    out["machine"]["load_end"] = _load()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ray_serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    over, run = out["dispatch_overhead_s"] * 1000, out["dispatch_overhead_run_s"] * 1000
    local_ms, ray_ms = ol["median_latency_s"] * 1000, o1["median_latency_s"] * 1000
    print(f"per-job dispatch overhead (1-step jobs, submit to done): {over:.1f} ms (local {local_ms:.0f} ms,"
          f" 1 Ray worker {ray_ms:.0f} ms; claim to finish: +{run:.1f} ms)")  # fmt: skip
    print(f"the Ray call alone (RemoteService.run vs PipelineService.run, 1-step render): "
          f"+{out['bare_call']['overhead_s'] * 1000:.1f} ms")  # fmt: skip
    print(f"throughput, {args.jobs} jobs of {args.long_steps} steps: local {tl['jobs_per_s']:.3f}/s, "
          f"1 worker {t1['jobs_per_s']:.3f}/s, 2 workers {t2['jobs_per_s']:.3f}/s")  # fmt: skip
    print(f"ratio 2 vs 1 workers: {out['ratio_2_vs_1_workers']:.2f}x; 1 worker vs local: "
          f"{out['ratio_1_worker_vs_local']:.2f}x")  # fmt: skip
    print(f"load (1 min) start {out['machine']['load_start']}, end {out['machine']['load_end']}; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
