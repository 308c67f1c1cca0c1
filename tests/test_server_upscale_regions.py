"""Server: A1111's upscaler list, hr_upscaler naming an upscaler model, extra-single-image, and the
native API's regional prompts (tiny model, a tiny random ESRGAN in the server's upscale_models/)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from server_support import LiveServer, tiny_service
from spandrel_support import import_spandrel, write_esrgan

from anima.recipe import Recipe, Region

SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import httpx  # noqa: F401

    from anima.server.app import create_app

    models = tmp_path_factory.mktemp("models")
    (models / "loras").mkdir()
    (models / "upscale_models").mkdir()
    write_esrgan(models / "upscale_models" / "tiny-2x.pth")
    app = create_app(tiny_service(lora_dirs=[models / "loras"]), data_dir=tmp_path_factory.mktemp("data"))
    with LiveServer(app) as srv:
        srv.models = models
        yield srv


def _b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def test_upscalers_and_extra_single_image(server) -> None:
    import httpx

    names = [u["name"] for u in httpx.get(f"{server.url}/sdapi/v1/upscalers").json()]
    assert "tiny-2x.pth" in names and "Lanczos" in names
    rng = np.random.default_rng(0)
    src = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    body = {"image": _b64(src), "upscaler_1": "tiny-2x", "upscaling_resize": 2}
    r = httpx.post(f"{server.url}/sdapi/v1/extra-single-image", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = _image(r.json()["image"])
    assert out.size == (64, 48) and "ESRGAN 2x" in r.json()["html_info"]
    spandrel = import_spandrel()
    d = spandrel.ModelLoader(torch.device("cpu")).load_from_file(server.models / "upscale_models/tiny-2x.pth")
    x = torch.from_numpy(np.asarray(src, dtype=np.float32) / np.float32(255))[None].permute(0, 3, 1, 2)
    y = d(x.contiguous()).permute(0, 2, 3, 1)[0].numpy()
    expected = np.clip(np.float32(255) * y, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(out), expected)
    url = f"{server.url}/sdapi/v1/extra-single-image"
    bad = httpx.post(url, json=body | {"upscaler_1": "nope"}, timeout=60)
    assert bad.status_code in (400, 422) and "upscaler model 'nope' not found" in bad.text


def test_hr_upscaler_names_an_upscaler_model(server) -> None:
    import httpx

    body = {"prompt": "1girl", "seed": 3, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1,
            "hr_upscaler": "tiny-2x", "denoising_strength": 0.5, "sampler_name": "Euler"}  # fmt: skip
    body |= SMALL
    r = httpx.post(f"{server.url}/sdapi/v1/txt2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    im = _image(r.json()["images"][0])
    assert im.size == (96, 96)
    hires = Recipe.from_json(im.info["anima_recipe"]).hires
    assert hires.upscaler == "tiny-2x.pth" and len(hires.upscaler_hash) == 16


def test_native_regions(server) -> None:
    import httpx

    recipe = {"prompt": "2girls", "seed": 1, "steps": 2, "width": 64, "height": 64, "sampler": "euler",
              "regions": [{"prompt": "red hair", "rect": [0, 0, 0.5, 1]},
                          {"prompt": "blue hair", "rect": [0.5, 0, 1, 1]}]}  # fmt: skip
    recipe["settings"] = {"regions_base_weight": 0.1}
    r = httpx.post(f"{server.url}/api/jobs", json={"recipe": recipe}, timeout=60)
    assert r.status_code in (200, 201, 202), r.text
    job = r.json()
    for _ in range(600):
        job = httpx.get(f"{server.url}/api/jobs/{job['id']}").json()
        if job["status"] in ("done", "failed"):
            break
        import time

        time.sleep(0.2)
    assert job["status"] == "done", job
    stored = Recipe.from_dict(job["recipe"])
    halves = (Region("red hair", rect=(0, 0, 0.5, 1)), Region("blue hair", rect=(0.5, 0, 1, 1)))
    assert stored.regions == halves and stored.regional.base_weight == 0.1
    overlapping = [{"prompt": "a", "rect": [0, 0, 0.6, 1]}, {"prompt": "b", "rect": [0.5, 0, 1, 1]}]
    bad = dict(recipe, regions=overlapping)
    r = httpx.post(f"{server.url}/api/jobs", json={"recipe": bad}, timeout=60)
    assert r.status_code in (400, 422) and "regions 1 and 2 overlap" in r.text
