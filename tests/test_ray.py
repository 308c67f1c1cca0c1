"""Batch on a local Ray cluster with 2 CPU actors: byte-identical to the local path; survives a kill."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import ray  # optional extra of anima, a test dependency: pip install "anima[ray]"
from test_batch import SPEC

from anima.jobs.batch import BatchJob, LocalExecutor, run_jobs, with_keys
from anima.jobs.store import OutputStore
from anima.recipe import Recipe

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'

N_JOBS = 40  # 32x32, 2 steps: the tiny fixture model; Ray start-up dominates on a 2-core box


def _jobs() -> list[BatchJob]:
    base = Recipe(prompt="1girl", width=32, height=32, steps=2, sampler="euler", cfg=1.0, dtype="fp32")
    jobs = [
        BatchJob(
            recipe=base.with_(prompt=f"1girl, smile, tag {i % 7}", seed=i), source="jobs.jsonl", line=i + 1
        )
        for i in range(N_JOBS)
    ]
    return with_keys(jobs, SPEC.fingerprint(), "fp32")


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> OutputStore:
    store = OutputStore(tmp_path_factory.mktemp("local"))
    report = run_jobs(_jobs(), store, LocalExecutor(SPEC.build()))
    assert report.rendered == N_JOBS and not report.errors
    return store


@pytest.fixture(scope="module")
def executor():
    from anima.jobs.ray import RayExecutor

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # A local cluster's CPU actors use this process's thread count: the same float kernels.
    ex = RayExecutor(SPEC, workers=2)
    pids = ex.actor_pids()
    print(f"ray start + 2 actors with the model: {time.perf_counter() - t0:.1f}s")
    assert len(set(pids)) == 2 and os.getpid() not in pids
    yield ex
    ex.shutdown()
    ray.shutdown()


def _files(store: OutputStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.images.glob("*.png"))}


def test_ray_batch_is_byte_identical(tmp_path: Path, local_run: OutputStore, executor) -> None:
    store = OutputStore(tmp_path / "ray")
    t0 = time.perf_counter()
    report = run_jobs(_jobs(), store, executor)
    print(f"ray: {N_JOBS} jobs in {time.perf_counter() - t0:.1f}s")
    assert report.rendered == N_JOBS and not report.errors
    assert _files(store) == _files(local_run)
    assert store.manifest_path.read_bytes() == local_run.manifest_path.read_bytes()


def test_killed_actor_still_completes_every_job_once(
    tmp_path: Path, local_run: OutputStore, executor
) -> None:
    store = OutputStore(tmp_path / "ray_kill")
    jobs = _jobs()[:16]
    victim = executor.actor_pids()[0]
    killed: list[int] = []

    def kill_once(done: int, total: int, job: BatchJob) -> None:
        if done == 3 and not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    delivered: list[str] = []
    report = run_jobs(
        jobs, store, executor, progress=kill_once, on_saved=lambda job, paths: delivered.append(job.key)
    )
    assert killed and not report.errors
    assert sorted(delivered) == sorted(j.key for j in jobs)  # each job saved exactly once
    counts = Counter(json.loads(ln)["key"] for ln in store.index_path.read_text().splitlines())
    assert set(counts) == {j.key for j in jobs} and set(counts.values()) == {1}
    reference = _files(local_run)
    assert all(reference[name] == data for name, data in _files(store).items())
    manifest = json.loads(store.manifest_path.read_text())
    assert [e["line"] for e in manifest["jobs"]] == list(range(1, 17))
    assert victim not in executor.actor_pids()  # Ray restarted the killed actor in a new process
