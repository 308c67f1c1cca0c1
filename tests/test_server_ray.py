"""`anima serve --ray` on a local Ray cluster of 2 CPU workers and the bundled demo model: 40 jobs
from 8 concurrent clients finish exactly once with the PNGs of the local path; a worker killed
mid-job and a server killed with SIGKILL lose no job and duplicate none; progress, previews and
cancel still work."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from server_support import LiveServer, ServerProcess, wait_job

from anima import demo
from anima.pipeline import RunOptions
from anima.server.events import EventHub
from anima.server.jobs import JobStore
from anima.server.runner import JobRunner
from anima.server.service import PipelineService
from anima.weights.discovery import ModelSet

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'

N_CLIENTS, JOBS_EACH = 8, 5
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "white", "black")


def demo_service() -> PipelineService:
    d = demo.default_model()
    ms = ModelSet(d.name, d.dit, d.text_encoder, d.vae, d.qwen_tokenizer, d.t5_tokenizer, demo.SOURCE)
    return PipelineService([ms], options=RunOptions(device="cpu", dtype="fp32"))


def recipe(i: int, steps: int = 4) -> dict:
    prompt = f"{COLOURS[i % 6]} {SHAPES[i % 3]}, {COLOURS[(i + 2) % 6]} background"
    return {"prompt": prompt, "negative_prompt": "", "size": "64x64", "steps": steps, "seed": i}


def submit(c: httpx.Client, recipe: dict) -> str:
    r = c.post("/api/jobs", json={"recipe": recipe})
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory: pytest.TempPathFactory):
    from anima.server.app import create_app
    from anima.server.ray_pool import RaySettings
    from anima.server.security import Limits

    app = create_app(
        demo_service(), data_dir=tmp_path_factory.mktemp("ray-serve"), limits=Limits(max_steps=1000),
        ray=RaySettings(workers=2, num_cpus=2),
    )  # fmt: skip
    with LiveServer(app) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            deadline = time.monotonic() + 180
            while any(w["state"] != "idle" for w in c.get("/api/workers").json()["workers"]):
                assert time.monotonic() < deadline, "the Ray workers did not start"
                time.sleep(0.2)
        yield srv


def replay_locally(srv: LiveServer, job_ids: list[str], out: Path) -> dict[str, bytes]:
    """The same stored jobs (same id, seq, time) run by the local path into `out`."""
    runner = JobRunner(
        JobStore(out / "scratch.sqlite3"), demo_service(), EventHub(), outputs_dir=out, inputs_dir=out,
        preview_every=0,
    )  # fmt: skip
    for job_id in job_ids:
        runner.run(srv.ctx.store.get(job_id))
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.png")}


def outputs_of(srv: LiveServer, jobs: list[dict]) -> dict[str, bytes]:
    return {name: (srv.ctx.outputs_dir / name).read_bytes() for j in jobs for name in j["outputs"]}


def test_40_jobs_from_8_clients_finish_once_byte_identical_to_local(ray_server, tmp_path: Path) -> None:
    srv = ray_server
    ids: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=srv.url, timeout=300) as c:
            for n in range(JOBS_EACH):
                i = k * JOBS_EACH + n
                if k % 4 == 3:  # a quarter of the clients use the A1111 API (one blocking call a job)
                    r = recipe(i)
                    body = {k2: r[k2] for k2 in ("prompt", "negative_prompt", "steps", "seed")}
                    r = c.post("/sdapi/v1/txt2img", json={**body, "width": 64, "height": 64})
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    job_id = json.loads(r.json()["info"])["job_id"]
                else:
                    r = c.post("/api/jobs", json={"recipe": recipe(i)})
                    if r.status_code != 202:
                        errors.append(r.text)
                        continue
                    job_id = r.json()["id"]
                with lock:
                    ids.append(job_id)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        jobs = [wait_job(c, i, timeout=600) for i in ids]
        workers = c.get("/api/workers").json()["workers"]
    print(f"40 jobs on 2 Ray workers: {time.perf_counter() - t0:.1f}s")
    assert not errors and len(ids) == len(set(ids)) == N_CLIENTS * JOBS_EACH
    assert [j["status"] for j in jobs] == ["done"] * len(ids)
    assert all(len(j["outputs"]) == 1 for j in jobs)  # exactly once: one image a job
    assert all(w["jobs_done"] > 0 for w in workers)  # both workers ran jobs
    ray_files = outputs_of(srv, jobs)
    assert len(ray_files) == len(ids)
    assert replay_locally(srv, ids, tmp_path / "local") == ray_files  # byte-identical PNGs


def _running_on_worker(c: httpx.Client, job_id: str, min_step: int = 2, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in c.get("/api/workers").json()["workers"]:
            if w["job"] == job_id and w["step"] >= min_step:
                return w
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not start on a worker")


def test_killed_worker_mid_job_loses_no_job_and_duplicates_none(ray_server, tmp_path: Path) -> None:
    srv = ray_server
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        ids = [submit(c, recipe(100, steps=300))] + [submit(c, recipe(200 + i)) for i in range(6)]
        long_id = ids[0]
        victim = _running_on_worker(c, long_id)
        os.kill(victim["pid"], signal.SIGKILL)
        jobs = [wait_job(c, i, timeout=600) for i in ids]
        deadline = time.monotonic() + 120
        while any(w["state"] != "idle" for w in c.get("/api/workers").json()["workers"]):
            assert time.monotonic() < deadline, "the killed worker did not come back"
            time.sleep(0.2)
        workers = {w["name"]: w for w in c.get("/api/workers").json()["workers"]}
    assert [j["status"] for j in jobs] == ["done"] * len(ids)
    assert any("died" in n and "queued again" in n for n in jobs[0]["notes"])
    assert workers[victim["name"]]["restarts"] == 1 and workers[victim["name"]]["pid"] != victim["pid"]
    assert all(len(j["outputs"]) == 1 for j in jobs)
    assert not list(srv.ctx.outputs_dir.rglob(".*.tmp"))
    assert replay_locally(srv, ids, tmp_path / "local") == outputs_of(srv, jobs)


def test_progress_preview_and_cancel_reach_the_ray_worker(ray_server) -> None:
    srv = ray_server
    with httpx.Client(base_url=srv.url, timeout=60) as c:
        job_id = submit(c, recipe(300, steps=400))
        _running_on_worker(c, job_id, min_step=3)
        assert c.get(f"/api/jobs/{job_id}").json()["step"] >= 3
        progress = c.get("/sdapi/v1/progress").json()
        assert progress["state"]["job"] == job_id and progress["state"]["sampling_step"] >= 3
        deadline = time.monotonic() + 60
        while c.get(f"/api/jobs/{job_id}/preview").status_code != 200:
            assert time.monotonic() < deadline, "no preview from the Ray worker"
            time.sleep(0.1)
        assert c.delete(f"/api/jobs/{job_id}").status_code == 200
        job = wait_job(c, job_id, timeout=120)
    assert job["status"] == "cancelled" and job["outputs"] == []
    assert job["step"] < 400


def _server(data: Path, home: Path) -> ServerProcess:
    args = ("--ray", "--ray-workers", "2", "--preview-every", "0", "--max-steps", "1000")
    return ServerProcess(data, *args, home=home)


def test_sigkill_of_the_server_with_jobs_on_the_cluster_loses_none_runs_none_twice(tmp_path: Path) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    srv = _server(data, home).start(timeout=300)
    tree: list[psutil.Process] = []
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            # Two long jobs keep both workers busy while the short ones queue behind them.
            ids = [submit(c, recipe(400 + i, steps=300)) for i in range(2)]
            ids += [submit(c, recipe(500 + i)) for i in range(10)]
            for job_id in ids[:2]:
                _running_on_worker(c, job_id, timeout=300)
            workers = c.get("/api/workers").json()["workers"]
            assert {w["job"] for w in workers} == set(ids[:2])
            before = {j["id"]: j for j in c.get("/api/jobs", params={"limit": 200}).json()["items"]}
        tree = psutil.Process(srv.proc.pid).children(recursive=True)
        srv.kill()
        # The dead server's actors die with it: nothing keeps computing its jobs.
        gone, alive = psutil.wait_procs([psutil.Process(w["pid"]) for w in workers], timeout=60)
        assert not alive
    finally:
        srv.kill()
        for p in tree:  # Ray's agents of that local cluster outlive their raylet
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert all(before[i]["status"] in ("running", "queued") for i in ids)

    srv = _server(data, home).start(timeout=300)
    try:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            jobs = [wait_job(c, i, timeout=900) for i in ids]
    finally:
        srv.stop()
    assert [j["status"] for j in jobs] == ["done"] * len(ids)
    assert all(len(j["outputs"]) == 1 for j in jobs)
    pngs = list((data / "outputs").rglob("*.png"))
    assert len(pngs) == len(ids)  # exactly once: no duplicates, no partial files
    assert not list((data / "outputs").rglob(".*.tmp"))
