"""Security: names stay inside their folders, --listen needs a key, the key is enforced, CORS is
off by default, bodies and uploads are bounded."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient
from server_support import MODEL_NAME, TINY_FILES, tiny_service

from anima.server.app import create_app
from anima.server.security import Limits, resolve_inside

TRAVERSALS = ["../x", "../../etc/passwd", "/etc/passwd", "a/../../b", "..\\x", "C:\\x", "x\x00y", ".."]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    loras = tmp_path_factory.mktemp("loras")
    outside = tmp_path_factory.mktemp("outside") / "secret.safetensors"
    outside.write_bytes(b"not a lora")
    (loras / "escape.safetensors").symlink_to(outside)
    (loras / "inside.safetensors").write_bytes(b"x")
    return tiny_service(lora_dirs=[loras])


@pytest.fixture(scope="module")
def client(service, tmp_path_factory):
    app = create_app(service, data_dir=tmp_path_factory.mktemp("sec"), limits=Limits(max_side=128))
    with TestClient(app) as c:
        yield c


def test_resolve_inside_refuses_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "dirlink").symlink_to(tmp_path)
    assert resolve_inside(root, "sub/a.png", "output") == (root / "sub" / "a.png").resolve()
    for bad in [*TRAVERSALS, "link.png", "dirlink/secret.png", "sub/../../secret.png", ""]:
        with pytest.raises(Exception, match="not allowed|outside|empty"):
            resolve_inside(root, bad, "output")


@pytest.mark.parametrize("name", TRAVERSALS)
def test_every_name_field_refuses_traversal(client, name):
    base = {"prompt": "x", "size": "64x64", "steps": 1}
    cases = [
        ("/api/jobs", {"recipe": {**base, "model": name}}),
        ("/api/jobs", {"recipe": {**base, "loras": [[name, 1.0]]}}),
        ("/api/jobs", {"recipe": base, "output_name": name}),
        (
            "/sdapi/v1/txt2img",
            {"prompt": "x", "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": name}},
        ),
        ("/sdapi/v1/options", {"sd_model_checkpoint": name}),
    ]
    for path, body in cases:
        r = client.post(path, json=body)
        assert r.status_code == 400, (path, body, r.text)
        assert "not allowed" in r.json()["detail"] or "not served" in r.json()["detail"], r.text
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == MODEL_NAME


def test_output_files_are_served_only_from_the_outputs_folder(client):
    outputs = client.app.state.ctx.outputs_dir
    (outputs / "escape.png").symlink_to(client.app.state.ctx.data_dir / "jobs.sqlite3")
    for path in [
        "../jobs.sqlite3",
        "%2e%2e/jobs.sqlite3",
        "..%2Fjobs.sqlite3",
        "escape.png",
        "%2Fetc%2Fpasswd",
    ]:
        r = client.get(f"/api/outputs/{path}")
        assert r.status_code in (400, 404), (path, r.status_code)
        assert b"SQLite" not in r.content


def test_loras_resolve_only_inside_their_folders(client):
    assert [item["name"] for item in client.get("/sdapi/v1/loras").json()] == [
        "inside"
    ]  # the symlink is not listed
    r = client.post(
        "/api/jobs", json={"recipe": {"prompt": "x", "size": "64x64", "loras": [["escape", 1.0]]}}
    )
    assert r.status_code == 400 and "not found" in r.json()["detail"]


def test_listen_without_key_refuses_to_start(capsys):
    from anima.cli import main

    common = ["--dit", str(TINY_FILES["dit"]), "--text-encoder", str(TINY_FILES["text_encoder"])]
    assert main(["serve", "--listen", "--port", "1", *common]) == 2
    assert "without --api-key" in capsys.readouterr().err
    assert main(["serve", "--host", "192.168.1.5", "--port", "1", *common]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_api_key_is_required_when_set(service, tmp_path):
    app = create_app(service, data_dir=tmp_path, api_key="s3cret")
    with TestClient(app) as c:
        for path in ("/sdapi/v1/options", "/api/jobs", "/", "/static/app.js", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/sdapi/v1/options", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/sdapi/v1/options", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert (
            c.get("/sdapi/v1/options", auth=("anyone", "s3cret")).status_code == 200
        )  # A1111 --api-auth form
        assert c.get("/sdapi/v1/options", auth=("anyone", "wrong")).status_code == 401
        bad = base64.b64encode(b"\xff\xfe").decode()
        assert c.get("/sdapi/v1/options", headers={"Authorization": f"Basic {bad}x"}).status_code == 401


def test_api_key_in_user_pass_form_needs_both(service, tmp_path):
    app = create_app(service, data_dir=tmp_path, api_key="alice:pw")
    with TestClient(app) as c:
        assert c.get("/sdapi/v1/options", auth=("alice", "pw")).status_code == 200
        assert c.get("/sdapi/v1/options", auth=("bob", "pw")).status_code == 401


def test_cors_off_by_default_and_on_for_named_origins(service, client, tmp_path):
    r = client.get("/sdapi/v1/options", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    pre = client.options(
        "/sdapi/v1/options", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in pre.headers
    app = create_app(service, data_dir=tmp_path, cors_origins=["http://ok.example"], api_key="k")
    with TestClient(app) as c:
        pre = c.options(
            "/sdapi/v1/options",
            headers={"Origin": "http://ok.example", "Access-Control-Request-Method": "GET"},
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ok.example"
        r = c.get("/sdapi/v1/options", headers={"Origin": "http://evil.example", "Authorization": "Bearer k"})
        assert "access-control-allow-origin" not in r.headers


def test_body_and_upload_limits(service, tmp_path):
    limits = Limits(max_body_bytes=10_000, max_upload_bytes=1000, max_upload_pixels=64 * 64)
    app = create_app(service, data_dir=tmp_path, limits=limits)
    with TestClient(app) as c:
        r = c.post(
            "/api/jobs", content=b"{" + b" " * 20_000 + b"}", headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and "10000 bytes" in r.json()["detail"]

        def chunks():
            yield b'{"recipe": {"prompt": "x"}}'

        r = c.post("/api/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 411
        big = base64.b64encode(b"\x89PNG" + b"0" * 2000).decode()
        r = c.post("/sdapi/v1/png-info", json={"image": big})
        assert r.status_code == 400 and "1000 bytes" in r.json()["detail"]
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("L", (200, 200)).save(buf, format="PNG")  # tiny file, too many pixels
        r = c.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buf.getvalue()).decode()})
        assert r.status_code == 400 and "pixels" in r.json()["detail"]
        r = c.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"GIF89a garbage").decode()})
        assert r.status_code == 400 and "could not be decoded" in r.json()["detail"]
