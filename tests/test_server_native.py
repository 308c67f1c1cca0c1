"""The native API: jobs (create, page, get, cancel, forget), outputs, the SSE stream, persistence
across a restart in-process, validation limits, and a load run (50 jobs from 10 clients)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from server_support import MODEL_NAME, LiveServer, tiny_service, wait_job

from anima.imageio import read_recipe
from anima.server.app import create_app
from anima.server.security import Limits

LIMITS = Limits(max_side=256, max_steps=500, max_batch=4, max_n_iter=4, max_prompt_chars=2000)


def _tiny_lora() -> dict:
    """A visible LoRA on two DiT layers of the tiny model."""
    import torch

    from anima.lora.modules import LoRA
    from anima.lora.targets import Target

    g = torch.Generator().manual_seed(0)
    shapes = {
        Target("dit", "blocks.0.self_attn.v_proj"): (256, 256),
        Target("dit", "blocks.1.mlp.layer2"): (256, 1024),
    }
    return {
        t: LoRA(torch.randn(4, i, generator=g) * 0.3, torch.randn(o, 4, generator=g) * 0.3, alpha=4.0)
        for t, (o, i) in shapes.items()
    }


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from anima.lora.file import save_lora

    loras = tmp_path_factory.mktemp("loras")
    save_lora(_tiny_lora(), loras / "style" / "mystyle.safetensors", "comfy")
    return tiny_service(lora_dirs=[loras])


@pytest.fixture(scope="module")
def server(service, tmp_path_factory):
    app = create_app(service, data_dir=tmp_path_factory.mktemp("native"), limits=LIMITS)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def recipe(**kw):
    return {"prompt": "1girl", "size": "64x64", "steps": 2, "seed": 1, **kw}


def png_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_job_lifecycle_and_outputs(server, client):
    r = client.post("/api/jobs", json={"recipe": recipe(batch_size=2), "n_iter": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and job["recipe"]["model"] == MODEL_NAME
    done = wait_job(client, job["id"])
    assert done["status"] == "done" and len(done["outputs"]) == 4
    for i, (rel, url) in enumerate(zip(done["outputs"], done["urls"], strict=True)):
        path = server.ctx.outputs_dir / rel
        assert path.is_file()
        assert read_recipe(path).seed == 1 + i // 2  # iteration k runs seed + k
        img = client.get(url)
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert img.content == path.read_bytes()
    page = client.get("/api/jobs", params={"limit": 1}).json()
    assert page["total"] >= 1 and page["items"][0]["id"] == job["id"] and page["limit"] == 1
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 200  # forget a finished job
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert (server.ctx.outputs_dir / done["outputs"][0]).is_file()  # its files stay


def test_cancel_queued_and_running(server, client):
    long = client.post("/api/jobs", json={"recipe": recipe(steps=400)}).json()
    queued = client.post("/api/jobs", json={"recipe": recipe()}).json()
    assert queued["position"] is not None
    r = client.delete(f"/api/jobs/{queued['id']}")
    assert r.json()["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while client.get(f"/api/jobs/{long['id']}").json()["step"] < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.delete(f"/api/jobs/{long['id']}")
    stopped = wait_job(client, long["id"])
    assert stopped["status"] == "cancelled" and stopped["step"] < 400
    assert wait_job(client, queued["id"])["outputs"] == []  # never ran


def test_img2img_and_inpaint_jobs(server, client):
    rng = np.random.default_rng(1)
    init = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    a = client.post("/api/jobs", json={"recipe": recipe(denoise=0.5), "init_image": png_b64(init)}).json()
    b = client.post(
        "/api/jobs",
        json={
            "recipe": recipe(denoise=0.9),
            "init_image": png_b64(init),
            "inpaint": {"mask": png_b64(mask), "blur": 0},
        },
    ).json()
    assert (a["kind"], b["kind"]) == ("img2img", "inpaint")
    a, b = wait_job(client, a["id"]), wait_job(client, b["id"])
    assert a["status"] == b["status"] == "done"
    out = np.asarray(Image.open(server.ctx.outputs_dir / b["outputs"][0]))
    assert np.array_equal(out[:, :32], init[:, :32])  # unmasked half untouched
    assert not np.array_equal(out[:, 32:], init[:, 32:])
    assert read_recipe(server.ctx.outputs_dir / a["outputs"][0]).denoise == 0.5


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"recipe": recipe(size="512x512")}, 400, "over this server's limit of 256"),
        ({"recipe": recipe(steps=501)}, 400, "steps 501 is over"),
        ({"recipe": recipe(batch_size=5)}, 400, "batch size 5"),
        ({"recipe": recipe(), "n_iter": 5}, 400, "n_iter 5"),
        ({"recipe": recipe(prompt="x" * 2001)}, 400, "2001 characters"),
        ({"recipe": recipe(size="60x64")}, 400, "not a multiple of 8"),
        ({"recipe": recipe(sampler="nope")}, 400, "unknown sampler"),
        ({"recipe": recipe(denoise=0.5)}, 400, "needs init_image"),
        ({"recipe": recipe(), "init_image": "bm90IGFuIGltYWdl"}, 400, "could not be decoded"),
        ({"recipe": recipe(), "init_image": "%%%"}, 400, "not valid base64"),
        ({"recipe": recipe(), "bogus": 1}, 422, "extra"),
        ({"recipe": {"steps": 3}}, 422, "prompt"),
    ],
)
def test_validation_errors_are_clear_4xx(client, body, status, message):
    r = client.post("/api/jobs", json=body)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"])


def test_event_stream_reports_progress_and_completion(server, client):
    seen: list[tuple[str, dict]] = []
    ready = threading.Event()

    def listen():
        with httpx.stream("GET", server.url + "/api/events", timeout=60) as r:
            kind = None
            for line in r.iter_lines():
                if line.startswith("retry:"):
                    ready.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    seen.append((kind, data))
                    if kind == "job" and data.get("status") == "done":
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    job = client.post("/api/jobs", json={"recipe": recipe(steps=4)}).json()
    t.join(60)
    mine = [(k, d) for k, d in seen if d.get("id") == job["id"]]
    steps = [d["step"] for k, d in mine if k == "progress"]
    assert steps == [1, 2, 3, 4]
    assert mine[-1][0] == "job" and mine[-1][1]["status"] == "done" and mine[-1][1]["urls"]


def test_queue_persists_across_restart(service, tmp_path):
    from fastapi.testclient import TestClient

    # First life: the worker never starts, so the jobs stay queued in SQLite.
    first = create_app(service, data_dir=tmp_path, limits=LIMITS, start_worker=False)
    with TestClient(first) as c:
        ids = [c.post("/api/jobs", json={"recipe": recipe(seed=i)}).json()["id"] for i in range(3)]
        # One is claimed (as if the server died while running it): it must run again.
        assert first.state.ctx.store.claim_next().id == ids[0]
    second = create_app(service, data_dir=tmp_path, limits=LIMITS)
    with TestClient(second) as c:
        jobs = [wait_job(c, i) for i in ids]
    assert [j["status"] for j in jobs] == ["done"] * 3
    assert [read_recipe(tmp_path / "outputs" / j["outputs"][0]).seed for j in jobs] == [0, 1, 2]


def test_shutdown_puts_the_running_job_back_in_the_queue(service, tmp_path):
    import sqlite3

    from fastapi.testclient import TestClient

    app = create_app(service, data_dir=tmp_path, limits=LIMITS)
    with TestClient(app) as c:
        job = c.post("/api/jobs", json={"recipe": recipe(steps=500)}).json()
        deadline = time.monotonic() + 60
        while c.get(f"/api/jobs/{job['id']}").json()["step"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    # Read the file directly: opening a JobStore would itself requeue a `running` row.
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        status, step = db.execute("SELECT status, step FROM jobs WHERE id=?", (job["id"],)).fetchone()
    assert (status, step) == ("queued", 0)


@pytest.mark.slow
def test_load_50_jobs_from_10_clients_each_once(server):
    def client_run(k: int) -> list[str]:
        ids = []
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for i in range(5):
                body = {
                    "recipe": {"prompt": f"load {k}-{i}", "size": "32x32", "steps": 1, "sampler": "euler"}
                }
                r = c.post("/api/jobs", json=body)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            return [wait_job(c, i, timeout=300)["id"] for i in ids]

    with ThreadPoolExecutor(10) as pool:
        ids = [i for batch in pool.map(client_run, range(10)) for i in batch]
    assert len(set(ids)) == 50
    jobs = [server.ctx.store.get(i) for i in ids]
    assert all(j.status == "done" and len(j.outputs) == 1 for j in jobs)
    prompts = [read_recipe(server.ctx.outputs_dir / j.outputs[0]).prompt for j in jobs]
    assert sorted(prompts) == sorted(f"load {k}-{i}" for k in range(10) for i in range(5))
    files = {p for j in jobs for p in j.outputs}
    assert len(files) == 50  # each job ran once and wrote its own file


def test_loras_by_name_and_prompt_tag(server, client):
    assert client.get("/api/info").json()["loras"] == ["mystyle"]
    plain = client.post("/api/jobs", json={"recipe": recipe(steps=3)}).json()
    tagged = client.post("/api/jobs", json={"recipe": recipe(steps=3, loras=[["mystyle", 0.8]])}).json()
    a1111 = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "1girl <lora:mystyle:0.8>", "width": 64, "height": 64, "steps": 3, "seed": 1},
    )
    assert a1111.status_code == 200, a1111.text
    plain, tagged = wait_job(client, plain["id"]), wait_job(client, tagged["id"])
    img = {
        k: np.asarray(Image.open(server.ctx.outputs_dir / j["outputs"][0]))
        for k, j in [("p", plain), ("t", tagged)]
    }
    assert not np.array_equal(img["p"], img["t"])  # the LoRA changed the image
    from_a1111 = np.asarray(Image.open(io.BytesIO(base64.b64decode(a1111.json()["images"][0]))))
    assert np.array_equal(from_a1111, img["t"])  # prompt tag == recipe field
    assert read_recipe(server.ctx.outputs_dir / tagged["outputs"][0]).loras == (("mystyle", 0.8),)
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:nope:1>", "width": 64, "height": 64})
    assert bad.status_code == 400 and "LoRA 'nope' not found" in bad.json()["detail"]
