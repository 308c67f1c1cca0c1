"""A server killed with SIGKILL while 20 jobs are queued comes back with those jobs and runs them,
each exactly once (a real `anima serve` subprocess and the tiny model)."""

from __future__ import annotations

import httpx
import pytest
from server_support import ServerProcess, wait_job

from anima.imageio import read_recipe

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'


def test_sigkill_with_20_queued_jobs_then_restart_completes_them(tmp_path):
    data = tmp_path / "data"
    srv = ServerProcess(data, "--preview-every", "0", "--max-steps", "1000").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            # A long job keeps the worker busy while the 20 others queue behind it.
            blocker = c.post(
                "/api/jobs", json={"recipe": {"prompt": "blocker", "size": "32x32", "steps": 1000}}
            )
            blocker = blocker.json()["id"]
            ids = []
            for i in range(20):
                body = {"recipe": {"prompt": f"queued {i}", "size": "32x32", "steps": 1, "sampler": "euler"}}
                r = c.post("/api/jobs", json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            queued = c.get("/api/jobs", params={"status": "queued", "limit": 200}).json()
            assert {j["id"] for j in queued["items"]} >= set(ids)
        srv.kill()
    finally:
        srv.kill()

    srv = ServerProcess(data, "--preview-every", "0", "--max-steps", "1000").start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            # The job that was running is queued again (first in line); stop it to keep the test short.
            back = c.get(f"/api/jobs/{blocker}").json()
            assert back["status"] in ("queued", "running")
            c.delete(f"/api/jobs/{blocker}")
            assert wait_job(c, blocker)["status"] == "cancelled"
            jobs = [wait_job(c, i, timeout=300) for i in ids]
    finally:
        srv.stop()
    assert [j["status"] for j in jobs] == ["done"] * 20
    outputs = data / "outputs"
    assert [read_recipe(outputs / j["outputs"][0]).prompt for j in jobs] == [f"queued {i}" for i in range(20)]
    pngs = [p for p in outputs.rglob("*.png")]
    assert len(pngs) == 20  # exactly once: no duplicates, no partial files
    assert not list(outputs.rglob(".*.tmp"))
