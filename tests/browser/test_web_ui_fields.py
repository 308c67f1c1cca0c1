"""Every field the page sends round-trips through the recipe, one test per field group: the page's
payload -> the server's recipe -> the PNG's metadata (anima JSON and the A1111 infotext) -> the
recipe again -> the page's form -> the same payload. Nothing is run: the recipe is what the
server's own submitter makes of the payload."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright import sync_api
from server_support import LLLITE_PATCHES, LiveServer, tiny_service
from test_server_ui import CHROMIUM, CHROMIUM_ARGS

from anima.imageio import read_recipe, recipe_from_text, save_png
from anima.interop import a1111
from anima.recipe import changed_settings
from anima.server.schemas import JobCreate
from anima.workflows.init_image import file_digest

pytestmark = pytest.mark.slow
LLLITE_INPUTS = LLLITE_PATCHES.parent / "inputs"
CONTROL = LLLITE_INPUTS / "control_128.png"
INPAINT_SRC = LLLITE_INPUTS / "inpaint_src_128.png"
INPAINT_MASK = LLLITE_INPUTS / "mask_binary_128.png"

# group -> (tab, [(selector, value)], settings / recipe fields the recipe must then hold)
AXIS = "#grid-axes .grid-axis:nth-child({}) {}"
UNIT = '#control-units [data-unit="{}"] [data-control="{}"]'
GROUPS = {
    "core": ("txt2img", [
        ("#prompt", "1girl, round trip"), ("#negative", "lowres"), ("#width", "96"), ("#height", "80"),
        ("#steps", "7"), ("#cfg", "3.5"), ("#shift", "2.5"), ("#sampler", "euler_ancestral"),
        ("#scheduler", "karras"), ("#batch", "2"), ("#seed", "123"), ("#n-iter", "3"),
    ], {
        "prompt": "1girl, round trip", "negative_prompt": "lowres", "width": 96, "height": 80,
        "steps": 7, "cfg": 3.5, "shift": 2.5, "sampler": "euler_ancestral", "scheduler": "karras",
        "batch_size": 2, "seed": 123,
    }),
    "hires": ("txt2img", [
        ("#width", "64"), ("#height", "64"), ("#hires-on", True), ("#hires-scale", "1.5"),
        ("#hires-upscaler", "lanczos"), ("#hires-steps", "3"), ("#hires-denoise", "0.4"),
        ("#hires-sampler", "euler"), ("#hires-scheduler", "karras"), ("#hires-max-side", "1024"),
        ("#hires-max-step", "1.5"),
    ], {
        "hires_scale": 1.5, "hires_upscaler": "lanczos", "hires_steps": 3, "hires_denoise": 0.4,
        "hires_sampler": "euler", "hires_scheduler": "karras", "hires_max_side": 1024,
        "hires_max_step": 1.5,
    }),
    "guidance-rescale": ("txt2img", [("#guidance", "rescale-cfg"), ("#cfg-rescale", "0.5")],
                         {"guidance": "rescale-cfg", "cfg_rescale": 0.5}),
    "guidance-apg": ("txt2img", [
        ("#guidance", "apg"), ("#apg-eta", "0.5"), ("#apg-momentum", "-0.5"), ("#apg-norm-threshold", "10"),
    ], {"guidance": "apg", "apg_eta": 0.5, "apg_momentum": -0.5, "apg_norm_threshold": 10.0}),
    "guidance-zero-star": ("txt2img", [("#guidance", "cfg-zero-star"), ("#cfg-zero-init-steps", "2")],
                           {"guidance": "cfg-zero-star", "cfg_zero_init_steps": 2}),
    "nag": ("txt2img", [("#nag-scale", "3"), ("#nag-tau", "2"), ("#nag-alpha", "0.5")],
            {"nag_scale": 3.0, "nag_tau": 2.0, "nag_alpha": 0.5}),
    "turbo": ("txt2img", [("#preset-turbo", "click")], {"cfg": 1.0, "steps": 10, "nag_scale": 5.0}),
    "variation": ("txt2img", [("#variation-seed", "77"), ("#variation-strength", "0.3")],
                  {"variation_seed": 77, "variation_strength": 0.3}),
    "grid": ("txt2img", [
        (AXIS.format(1, "select"), "cfg"), (AXIS.format(1, "input"), "3,4"),
        (AXIS.format(2, "select"), "sampler"), (AXIS.format(2, "input"), "euler,heun"),
    ], {"grid": ["cfg=3,4", "sampler=euler,heun"]}),
    "regions": ("txt2img", [
        ("#region-columns", "click"), ("#region-list .region:nth-child(1) .region-prompt", "red hair"),
        ("#region-list .region:nth-child(2) .region-prompt", "blue hair"),
        ("#region-list .region:nth-child(2) .region-y1", "0.75"),
        ("#regions-base-weight", "0.3"), ("#regions-end-step", "4"), ("#regions-overlap", "blend"),
    ], {
        "regions": [{"prompt": "red hair", "rect": [0.0, 0.0, 0.5, 1.0]},
                    {"prompt": "blue hair", "rect": [0.5, 0.0, 1.0, 0.75]}],
        "regions_base_weight": 0.3, "regions_end_step": 4, "regions_overlap": "blend",
    }),
    "reference": ("txt2img", [("#reference-file", "FILE"), ("#reference-strength", "0.6")],
                  {"reference_strength": 0.6}),
    "comfy": ("txt2img", [
        ("#start-step", "2"), ("#end-step", "5"), ("#add-noise", False), ("#leftover-noise", True),
        ("#zero-negative", True), ("#lora-keys", "comfyui"),
    ], {
        "start_step": 2, "end_step": 5, "add_noise": False, "leftover_noise": True, "zero_negative": True,
        "lora_keys": "comfyui",
    }),
    # Unit 1 previewed through a preprocessor, unit 2 turned on by choosing its image, with a mask;
    # unit 3 left off. The images are compared by their pixels (`_check_control_images`).
    "control": ("txt2img", [
        (UNIT.format(0, "enabled"), True), (UNIT.format(0, "model"), "anima_lllite_tiny_aspp"),
        (UNIT.format(0, "image"), CONTROL), (UNIT.format(0, "preprocessor"), "invert"),
        (UNIT.format(0, "preview"), "click"), (UNIT.format(0, "strength"), "0.8"),
        (UNIT.format(0, "start"), "0.1"), (UNIT.format(0, "end"), "0.9"),
        (UNIT.format(1, "image"), INPAINT_SRC), (UNIT.format(1, "model"), "anima_lllite_tiny_inpaint"),
        (UNIT.format(1, "mask"), INPAINT_MASK), (UNIT.format(1, "strength"), "-0.5"),
    ], {"controls": [
        {"model": "anima_lllite_tiny_aspp", "strength": 0.8, "start": 0.1, "end": 0.9},
        {"model": "anima_lllite_tiny_inpaint", "strength": -0.5, "start": 0.0, "end": 1.0},
    ]}),
    "speed": ("txt2img", [("#tiled-vae", "on"), ("#step-cache", "0.1")],
              {"tiled_vae": "on", "step_cache": 0.1}),
    "img2img": ("img2img", [("#denoise", "0.45")], {"denoise": 0.45}),
    "inpaint": ("inpaint", [
        ("#denoise", "0.7"), ("#mask-blur", "2"), ("#mask-grow", "3"), ("#inpaint-area", "only masked"),
        ("#inpaint-padding", "16"),
    ], {
        "denoise": 0.7, "mask_blur": 2, "mask_grow": 3, "inpaint_area": "only masked",
        "inpaint_padding": 16,
    }),
}  # fmt: skip


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from anima.server.app import create_app

    service = tiny_service(patch_dirs=[LLLITE_PATCHES])
    app = create_app(service, data_dir=tmp_path_factory.mktemp("fields"), start_worker=False)
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "reference.png"
    Image.new("RGB", (64, 48), (200, 40, 90)).save(path)
    return path


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _set(pg, selector: str, value, file: Path | None = None) -> None:
    el = pg.locator(selector)
    if isinstance(value, Path):  # a control unit's image or mask (the payload waits for the read)
        el.set_input_files(str(value))
        return
    if value == "FILE":
        el.set_input_files(str(file))
        pg.wait_for_function("!document.querySelector('#reference-preview').hidden")
        return
    if value is True:
        el.check()
    elif value is False:
        el.uncheck()
    elif value == "click":
        el.click()
    elif el.evaluate("e => e.tagName") == "SELECT":
        el.select_option(value)
    else:
        el.evaluate("(e, v) => { e.value = v; }", value)
    el.dispatch_event("change")


def _pixels(data_url_or_path) -> np.ndarray:
    if isinstance(data_url_or_path, str) and data_url_or_path.startswith("data:"):
        data_url_or_path = io.BytesIO(base64.b64decode(data_url_or_path.split(",", 1)[1]))
    return np.asarray(Image.open(data_url_or_path))


def _split_control_images(payload: dict) -> list[dict]:
    """The payload's control units without their images (returned: each unit's image and mask)."""
    return [{k: u.pop(k) for k in ("image", "mask") if k in u} for u in payload["controls"]]


def _check_control_images(recipe, sent: list[dict]) -> None:
    """The server stored each unit's image and mask as the page sent them (unit 1: inverted)."""
    assert len(recipe.controls) == len(sent) == 2
    for unit, images in zip(recipe.controls, sent, strict=True):
        assert unit.image_hash == file_digest(Path(unit.image))
        assert np.array_equal(_pixels(unit.image), _pixels(images["image"]).astype(np.uint8)[..., :3])
        assert bool(unit.mask) == ("mask" in images)
    a, b = recipe.controls
    assert np.array_equal(_pixels(a.image), 255 - np.asarray(Image.open(CONTROL).convert("RGB")))
    assert np.array_equal(_pixels(b.image), np.asarray(Image.open(INPAINT_SRC).convert("RGB")))
    assert np.array_equal(_pixels(b.mask), np.asarray(Image.open(INPAINT_MASK).convert("L")))


def _recipe(server, payload: dict):
    """What the server queues for the page's payload (an init image and mask added for img2img)."""
    body = dict(payload)
    if "denoise" in body["recipe"]:
        body["init_image"] = _data_url(Image.new("RGB", (64, 64), (90, 120, 200)))
    if body.get("inpaint") is None and payload.get("_mode") == "inpaint":
        body["inpaint"] = {"mask": _data_url(Image.new("L", (64, 64), 255)), "blur": payload["_blur"]}
    body.pop("_mode", None)
    body.pop("_blur", None)
    submitter = server.ctx.submitter  # the app runs no worker: the job only waits in the queue
    spec = submitter.submit(submitter.prepare_native(JobCreate.model_validate(body))).spec
    return spec.recipe, spec.n_iter


@pytest.mark.parametrize("group", list(GROUPS))
def test_field_group_round_trips(group, browser, server, reference_png, tmp_path):
    tab, actions, expected = GROUPS[group]
    pg = browser.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/")
    pg.wait_for_function("!document.querySelector('#generate').disabled")
    pg.click(f"#tab-{tab}")
    pg.evaluate("document.querySelectorAll('details').forEach((d) => { d.open = true; })")
    pg.fill("#prompt", "round trip")
    _set(pg, "#seed", "5")  # a fixed seed: the server would draw one otherwise
    for selector, value in actions:
        _set(pg, selector, value, reference_png)
    payload = pg.evaluate("window.anima.payload()")
    payload["_mode"], payload["_blur"] = tab, int(pg.input_value("#mask-blur"))

    recipe, n_iter = _recipe(server, payload)
    sent_images = _split_control_images(payload)
    assert n_iter == payload["n_iter"]
    settings = changed_settings(recipe)
    held = {**recipe.to_dict(), **settings, "grid": [a.spec() for a in recipe.grid]}
    if "reference_image" in payload:  # stored by the server, recorded by path and digest
        assert recipe.reference.image_hash == file_digest(Path(recipe.reference.image))
        assert Image.open(recipe.reference.image).size == (64, 48)
    if "controls" in expected:  # the units' fields; their stored images by their pixels
        fields = ("model", "strength", "start", "end")
        held["controls"] = [{k: getattr(u, k) for k in fields} for u in recipe.controls]
        _check_control_images(recipe, sent_images)
    assert {k: held[k] for k in expected} == expected

    # Through the PNG: the anima JSON chunk gives the same recipe; the infotext the same settings.
    png = save_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8), recipe)
    again = read_recipe(png)
    assert again == recipe
    from_infotext = recipe_from_text({"parameters": a1111.infotext(recipe)}, "the infotext")
    assert changed_settings(from_infotext) == settings

    # And back into a freshly loaded page: its form sends the same payload again.
    pg.reload()
    pg.wait_for_function("!document.querySelector('#generate').disabled")
    pg.click(f"#tab-{tab}")
    pg.evaluate(
        "([r, s]) => window.anima.fill(r, s)", [again.to_dict(), changed_settings(again)]
    )
    payload2 = pg.evaluate("window.anima.payload()")
    payload2["_mode"], payload2["_blur"] = tab, int(pg.input_value("#mask-blur"))
    if recipe.controls:  # the form sends again the images the server stored (fetched back from it)
        _check_control_images(recipe, _split_control_images(payload2))
    # The batch count belongs to the job (checked above), not to the recipe a PNG records; a
    # reference image is recorded as the server's file, which the form fetches back from it.
    if "reference_image" in payload:
        stored = _pixels(recipe.reference.image)
        assert np.array_equal(_pixels(payload.pop("reference_image"))[..., :3], stored)
        assert np.array_equal(_pixels(payload2.pop("reference_image"))[..., :3], stored)
    assert {**payload2, "n_iter": payload["n_iter"]} == payload
    pg.close()
    assert not errors, errors
