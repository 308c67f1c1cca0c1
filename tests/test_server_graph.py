"""The native API takes a ComfyUI graph (``{"graph": ...}`` instead of ``{"recipe": ...}``): the same
image as the CLI's re-make of that graph, the served model and LoRAs found by name, and one-line
400s for what the server does not take from a graph."""

from __future__ import annotations

import copy
import json

import httpx
import numpy as np
import pytest
from comfy_support import FIX
from PIL import Image
from server_support import MODEL_NAME, LiveServer, tiny_service, wait_job

from anima.imageio import read_recipe
from anima.server.app import create_app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = create_app(
        tiny_service(lora_dirs=[FIX / "models" / "loras"]), data_dir=tmp_path_factory.mktemp("g")
    )
    with LiveServer(app) as srv:
        yield srv


def _graph(case_id: str) -> dict:
    return json.loads((FIX / case_id / "graph.json").read_text())


@pytest.mark.parametrize("kind", ["graph", pytest.param("workflow", marks=pytest.mark.slow)])
def test_graph_job_makes_comfyuis_image(server, kind: str) -> None:
    case = "wf_c_lora_kohya_08"
    data = json.loads((FIX / case / f"{kind}.json").read_text())
    with httpx.Client(base_url=server.url, timeout=120) as c:
        r = c.post("/api/jobs", json={"graph": data})
        assert r.status_code == 202, r.text
        done = wait_job(c, r.json()["id"])
    assert done["status"] == "done", done
    path = server.ctx.outputs_dir / done["outputs"][0]
    got = np.asarray(Image.open(path).convert("RGB")).astype(int)
    ref = np.asarray(Image.open(FIX / case / "Anima_00001_.png").convert("RGB")).astype(int)
    assert np.abs(got - ref).max() <= 2  # the fixtures' AVX2 CPU vs this one (see comfy_support)
    recipe = read_recipe(path)
    assert recipe.model == MODEL_NAME and recipe.loras == (("anima_tiny_lora_kohya", 0.8),)
    assert recipe.comfy.lora_keys == "comfyui"


def _two_outputs() -> dict:
    g = _graph("wf_a_anima_base_flat")
    g["9"] = {"class_type": "SaveImage", "inputs": {"images": ["73", 0], "filename_prefix": "x"}}
    return g


def _unknown_model() -> dict:
    g = copy.deepcopy(_graph("wf_a_anima_base_flat"))
    g["78"]["inputs"]["unet_name"] = "anima-base-v1.0.safetensors"
    return g


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"graph": _graph("wf_e_img2img_denoise_055")}, 400, "the server takes graphs without LoadImage"),
        ({"graph": _two_outputs()}, 400, "the graph has 2 outputs (9, 46)"),
        ({"graph": _unknown_model()}, 400, "model 'anima-base-v1.0' is not served here"),
        ({"graph": {"1": {"class_type": "Nope", "inputs": {}}}}, 400, "no SaveImage or PreviewImage node"),
        (
            {"graph": _graph("wf_a_anima_base_flat"), "recipe": {"prompt": "x"}},
            422,
            "give either recipe or graph",
        ),
    ],
)
def test_graph_errors_are_clear_4xx(server, body: dict, status: int, message: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/api/jobs", json=body)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json()["detail"])


def test_png_info_reads_a_comfyui_png(server) -> None:
    """The web UI's PNG info takes a ComfyUI PNG: its graph planned as a graph job would be."""
    import base64

    png = FIX / "wf_c_lora_kohya_08" / "Anima_00001_.png"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/api/png-recipe", json={"image": base64.b64encode(png.read_bytes()).decode()})
        assert r.status_code == 200, r.text
        info = r.json()
        pictures = c.post("/api/png-recipe", json={"image": base64.b64encode(
            (FIX / "wf_e_img2img_denoise_055" / "Anima_00001_.png").read_bytes()).decode()})  # fmt: skip
    assert info["format"] == "comfyui" and info["runnable"]
    assert info["recipe"]["model"] == MODEL_NAME
    assert info["recipe"]["loras"] == [["anima_tiny_lora_kohya", 0.8]]
    assert info["settings"]["lora_keys"] == "comfyui"
    # A graph that loads a picture: one line saying what the server takes instead.
    assert pictures.status_code == 400 and "LoadImage" in pictures.json()["detail"]
    assert "\n" not in pictures.json()["detail"]
