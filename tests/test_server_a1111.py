"""A real A1111 client library (webuiapi, from PyPI) against `anima serve` on 127.0.0.1 with the
tiny fixture model: txt2img, img2img + inpaint, options, samplers, progress, interrupt, skip."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import numpy as np
import pytest
import webuiapi
from PIL import Image
from server_support import MODEL_NAME, LiveServer, tiny_service

from anima.recipe import Recipe

SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from anima.server.app import create_app
    from anima.server.security import Limits

    app = create_app(
        tiny_service(), data_dir=tmp_path_factory.mktemp("a1111"), limits=Limits(max_side=256, max_steps=2000)
    )
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture()
def api(server):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)


def test_txt2img_returns_images_with_metadata(api):
    result = api.txt2img(
        prompt="1girl, solo", negative_prompt="", seed=1234, cfg_scale=4.0, batch_size=2, **SMALL
    )
    assert len(result.images) == 2
    assert all(im.size == (64, 64) for im in result.images)
    assert result.info["all_seeds"] == [1234, 1234]
    assert result.info["sampler_name"] == "Euler a"
    assert result.info["sd_model_name"] == MODEL_NAME
    assert result.info["notes"] == []  # webuiapi sends ~40 fields, all at their defaults
    params = result.images[0].info["parameters"]
    assert params.startswith("1girl, solo\n") and "Steps: 3, Sampler: Euler a" in params
    recipe = json.loads(result.images[0].info["anima_recipe"])
    assert (
        recipe["seed"] == 1234 and recipe["sampler"] == "euler_ancestral" and recipe["negative_prompt"] == ""
    )
    # Same seed, same settings: the same image (the server is deterministic like the CLI).
    again = api.txt2img(
        prompt="1girl, solo", negative_prompt="", seed=1234, cfg_scale=4.0, batch_size=2, **SMALL
    )
    assert np.array_equal(np.asarray(again.images[1]), np.asarray(result.images[1]))


def test_txt2img_notes_unknown_and_unsupported_fields(api):
    result = api.txt2img(prompt="x", seed=1, restore_faces=True, **SMALL)
    notes = " ".join(result.info["notes"])
    assert "restore_faces" in notes
    raw = api.custom_post(
        "txt2img", {"prompt": "x", "seed": 1, "my_extension_field": [1, 2], **SMALL}, baseurl=True
    )
    assert any("my_extension_field" in n for n in raw.info["notes"])


def test_img2img_and_inpaint(api):
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    out = api.img2img(images=[init], prompt="x", seed=5, denoising_strength=0.5, **SMALL)
    assert out.image.size == (64, 64)
    assert out.info["denoising_strength"] == 0.5
    assert not np.array_equal(np.asarray(out.image), np.asarray(init))

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inp = api.img2img(
        images=[init], mask_image=mask, mask_blur=2, prompt="x", seed=5, denoising_strength=0.8, **SMALL
    )
    a, b = np.asarray(inp.image).astype(int), np.asarray(init).astype(int)
    assert np.array_equal(a[:8], b[:8]) and np.array_equal(a[:, -8:], b[:, -8:])  # outside the mask: kept
    assert np.abs(a[24:40, 24:40] - b[24:40, 24:40]).mean() > 5  # inside: repainted
    # webuiapi's default inpaint_full_res=True: only the masked region (+ padding) is repainted.
    assert any(n.startswith("only masked: repainted") for n in inp.info["notes"]), inp.info["notes"]
    assert "Inpaint area: only masked" in inp.image.info["parameters"]


def test_img2img_refuses_undecodable_image(api):
    resp = api.session.post(
        f"{api.baseurl}/img2img", json={"init_images": [base64.b64encode(b"not an image").decode()], **SMALL}
    )
    assert resp.status_code == 400
    assert "could not be decoded" in resp.json()["detail"]


def test_catalog_endpoints(api):
    names = api.util_get_sampler_names()
    assert "Euler a" in names and "ER SDE" in names and "DPM++ 2M" in names
    scheds = api.util_get_scheduler_names()
    assert "karras" in scheds and "automatic" in scheds
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == [MODEL_NAME]
    assert api.get_loras() == []
    assert api.refresh_checkpoints() == {"models": 1, "loras": 0}


def test_options_get_and_set(api):
    opts = api.get_options()
    assert opts["sd_model_checkpoint"] == MODEL_NAME
    assert api.util_get_current_model() == MODEL_NAME
    assert api.set_options({"sd_model_checkpoint": MODEL_NAME, "CLIP_stop_at_last_layers": 2}) == {
        "updated": ["sd_model_checkpoint"],
        "ignored": ["CLIP_stop_at_last_layers"],
    }
    api.util_set_model("anima tiny")  # closest title, as webuiapi picks it
    bad = api.session.post(f"{api.baseurl}/options", json={"sd_model_checkpoint": "no-such-model"})
    assert bad.status_code == 400 and "not served" in bad.json()["detail"]
    assert api.get_options()["sd_model_checkpoint"] == MODEL_NAME


def test_png_info_reads_back_the_parameters(api):
    result = api.txt2img(prompt="png info test", seed=77, **SMALL)
    info = api.png_info(result.image)
    assert info.info.startswith("png info test\n") and "Seed: 77" in info.info
    assert info.json["parameters"]["Seed"] == "77"
    assert "anima_recipe" in info.json["items"]


def _run_in_thread(fn):
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except Exception as exc:  # surfaced by the test
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    return t, box


def _wait_progress(api, cond, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = api.get_progress()
        if cond(p):
            return p
        time.sleep(0.03)
    raise TimeoutError("progress condition never met")


def test_progress_reports_steps_and_a_preview(server, api):
    t, box = _run_in_thread(lambda: api.txt2img(prompt="slow", seed=3, width=64, height=64, steps=400))
    p = _wait_progress(api, lambda p: p["state"]["sampling_step"] >= 4 and p["current_image"])
    assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 400 and p["state"]["job_count"] >= 1
    preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
    assert preview.size == (64, 64)
    assert api.interrupt() == {"interrupted": True}
    t.join(60)
    assert "error" not in box
    assert box["result"].images == []  # interrupted before any image was finished
    assert any("interrupted" in n for n in box["result"].info["notes"])
    _wait_progress(api, lambda p: p["state"]["job_count"] == 0)


def test_interrupt_stops_within_one_step_and_server_keeps_serving(server, api):
    t, box = _run_in_thread(lambda: api.txt2img(prompt="long", seed=9, width=64, height=64, steps=900))
    _wait_progress(api, lambda p: p["state"]["sampling_step"] >= 3)
    api.interrupt()
    t.join(60)
    job_id = box["result"].info["job_id"]
    job = server.ctx.store.get(job_id)
    assert job.status == "interrupted"
    requested = int(re.search(r"interrupt requested after step (\d+)", " ".join(job.notes)).group(1))
    assert requested >= 3 and job.step - requested <= 1 and job.step < 900
    after = api.txt2img(prompt="after", seed=1, **SMALL)  # the worker goes on
    assert len(after.images) == 1


def test_skip_drops_one_iteration_only(server, api):
    t, box = _run_in_thread(
        lambda: api.txt2img(prompt="skip", seed=11, width=32, height=32, steps=20, n_iter=2)
    )
    _wait_progress(api, lambda p: p["state"]["job_no"] == 0 and p["state"]["sampling_step"] >= 2)
    assert api.skip() == {"skipped": True}
    t.join(60)
    result = box["result"]
    assert len(result.images) == 1  # the second iteration ran
    assert result.info["status"] == "done"


def test_txt2img_hires_fix(api):
    """A1111's hires fields drive anima's hires workflow (recorded in the PNG like a CLI run)."""
    hr = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.6}
    result = api.txt2img(prompt="1girl", seed=3, hr_upscaler="Latent", **hr, **SMALL)
    assert result.image.size == (96, 96)
    assert [n.split(":")[0] for n in result.info["notes"]] == ["hires fix"]  # the plan, nothing ignored
    hires = Recipe.from_json(result.image.info["anima_recipe"]).hires
    assert (hires.scale, hires.steps, hires.denoise) == (1.5, 2, 0.6)
    assert hires.upscaler == "latent-bilinear"
    assert "Hires upscale: 1.5" in result.image.info["parameters"]
    # hr_resize_x wins over hr_scale; a model upscaler becomes Lanczos, and the notes say so.
    resized = api.txt2img(
        prompt="1girl", seed=3, enable_hr=True, hr_resize_x=128, hr_upscaler="R-ESRGAN 4x+", **SMALL
    )
    assert resized.image.size == (128, 128)
    assert any("R-ESRGAN 4x+" in n and "lanczos" in n for n in resized.info["notes"])
    # Over the server's size limit (256): refused, naming the final size.
    with pytest.raises(Exception, match="hires fix to 320x320"):
        api.txt2img(prompt="1girl", seed=3, enable_hr=True, hr_scale=5, **SMALL)
    # Bad hires values are refused by the workflow's own checks, naming the setting.
    for bad, message in (
        ({"hr_scale": 9}, "hires scale must be in 1..8"),
        ({"hr_second_pass_steps": -1}, "hires steps must be an integer"),
        ({"denoising_strength": 0}, "hires denoise must be in"),
        ({"hr_resize_x": -5}, "hr_resize_x must be a whole number"),
    ):
        with pytest.raises(Exception, match=message):
            api.txt2img(prompt="1girl", seed=3, enable_hr=True, **bad, **SMALL)
