"""`anima serve --ray` without a cluster: the routing policy, the bounded retries of a job whose
worker died, and the one-line error when Ray is not installed (quick tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from server_support import tiny_service

from anima.cli import main
from anima.recipe import Recipe
from anima.server.events import EventHub
from anima.server.jobs import JobSpec, JobStore
from anima.server.runner import JobRunner, WorkerLost


class _DyingService:
    """A service whose worker dies at the first step of every run."""

    def run(self, recipe, *, progress=None, **_):
        progress(1, recipe.steps)
        raise WorkerLost("the Ray worker running this job died (ActorDiedError)")


def _store_with_job(tmp_path: Path) -> tuple[JobStore, str]:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = store.add(JobSpec(Recipe(prompt="x", width=32, height=32, steps=2)))
    return store, job.id


def test_a_lost_job_is_queued_again_then_fails_after_max_attempts(tmp_path: Path) -> None:
    from anima.server.ray_pool import RaySettings, RayWorkers

    store, job_id = _store_with_job(tmp_path)
    pool = RayWorkers(
        store, tiny_service(), EventHub(), RaySettings(max_attempts=2),
        outputs_dir=tmp_path / "out", inputs_dir=tmp_path / "in",
    )  # fmt: skip
    runner = JobRunner(
        store, _DyingService(), EventHub(), outputs_dir=tmp_path / "out", inputs_dir=tmp_path / "in",
        on_lost=pool.on_lost,
    )  # fmt: skip
    runner.run(store.claim_next())
    job = store.get(job_id)
    assert job.status == "queued" and "queued again" in job.notes[-1]  # back at its place
    runner.run(store.claim_next())
    job = store.get(job_id)
    assert job.status == "failed"
    assert job.error.startswith("the Ray worker running this job died") and "died 2 times" in job.error
    assert not list((tmp_path / "out").rglob("*.png"))


def test_without_a_policy_a_lost_job_fails_with_the_reason(tmp_path: Path) -> None:
    store, job_id = _store_with_job(tmp_path)
    runner = JobRunner(store, _DyingService(), EventHub(), outputs_dir=tmp_path, inputs_dir=tmp_path)
    runner.run(store.claim_next())
    assert store.get(job_id).status == "failed"


class _Slot:
    def __init__(self, name: str, model: str | None, last_used: float) -> None:
        self.name, self.model, self.last_used = name, model, last_used


def test_routing_prefers_the_worker_holding_the_model_then_an_empty_one_then_the_longest_idle() -> None:
    from anima.server.ray_pool import choose_slot

    a, b, empty = _Slot("a", "m1", 5.0), _Slot("b", "m2", 1.0), _Slot("e", None, 9.0)
    assert choose_slot([a, b, empty], "m2") is b
    assert choose_slot([a, b, empty], "m3") is empty
    assert choose_slot([a, b], "m3") is b  # idle the longest: it loads m3


def test_serve_ray_without_ray_says_how_to_install_it(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert main(["serve", "--ray", "--port", "0"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--ray needs Ray: pip install 'anima[ray]'" in err[0]


def test_ray_flags_need_ray(capsys) -> None:
    assert main(["serve", "--ray-workers", "2"]) != 0
    assert "--ray-workers needs --ray" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["/api/workers", "/sdapi/v1/memory"])
def test_status_endpoints_show_the_local_worker(tmp_path: Path, path: str) -> None:
    from fastapi.testclient import TestClient

    from anima.server.app import create_app

    app = create_app(tiny_service(), data_dir=tmp_path, start_worker=False)
    with TestClient(app) as c:
        body = c.get(path).json()
    workers = body["workers"] if path == "/api/workers" else body["anima_workers"]["workers"]
    assert workers[0]["kind"] == "local" and workers[0]["state"] == "idle" and workers[0]["device"] == "cpu"
    if path == "/sdapi/v1/memory":
        assert body["ram"]["total"] > 0 and "cuda" in body
