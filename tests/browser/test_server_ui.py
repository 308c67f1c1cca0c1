"""The web UI in a real browser: Playwright driving Debian's chromium (no browser download) against
`anima serve` with the tiny model. Screenshots go to tests/artifacts/browser/."""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from playwright import sync_api
from server_support import LLLITE_PATCHES, LiveServer, tiny_service, wait_job

pytestmark = pytest.mark.slow  # see pyproject.toml: the quick loop is -m 'not slow'

CHROMIUM = os.environ.get("ANIMA_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

if not Path(CHROMIUM).exists():  # a hard failure, not a skip: CI installs it (apt-get install chromium)
    raise RuntimeError(f"{CHROMIUM} not found: apt-get install -y chromium (or set ANIMA_TEST_CHROMIUM)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from anima.server.app import create_app
    from anima.server.security import Limits

    service = tiny_service(patch_dirs=[LLLITE_PATCHES])
    app = create_app(service, data_dir=tmp_path_factory.mktemp("ui"), limits=Limits(max_side=256))
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    external: list[str] = []
    pg.on(
        "request", lambda r: external.append(r.url) if not r.url.startswith((server.url, "data:")) else None
    )
    pg.goto(server.url + "/")
    pg.wait_for_function("!document.querySelector('#generate').disabled")
    yield pg
    context.close()
    assert not errors, errors
    assert not external, f"the page fetched outside the server: {external}"


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def set_value(pg, selector: str, value) -> None:
    pg.fill(selector, str(value))
    pg.dispatch_event(selector, "change")


def small_settings(pg, steps: int) -> None:
    set_value(pg, "#width", 64)
    set_value(pg, "#height", 64)
    set_value(pg, "#steps", steps)


def latest_job(server) -> dict:
    return httpx.get(server.url + "/api/jobs", params={"limit": 1}).json()["items"][0]


def test_generate_progress_recipe_and_reuse(page, server):
    pg = page
    pg.fill("#prompt", "1girl, ui test")
    small_settings(pg, 8)
    set_value(pg, "#seed", 4242)
    pg.check("#seed-lock")
    # Record every progress text the queue panel shows, to see it move to 100%.
    pg.evaluate(
        """() => { window.seen = [];
        new MutationObserver(() => document.querySelectorAll('#queue-list .pct')
            .forEach((e) => window.seen.push(e.textContent)))
          .observe(document.querySelector('#queue-list'),
                   {subtree: true, childList: true, characterData: true});
        }"""
    )
    pg.focus("#prompt")
    pg.keyboard.press("Control+Enter")
    item = pg.locator("#queue-list li").first
    item.locator(".pct", has_text="100%").wait_for(timeout=120_000)
    pg.locator("#queue-list li[data-status=done]").first.wait_for(timeout=60_000)
    shot(pg, "01-generated")
    seen = [int(s.rstrip("%")) for s in pg.evaluate("window.seen")]
    assert any(0 < v < 100 for v in seen) and seen[-1] == 100
    job = latest_job(server)
    assert job["recipe"]["seed"] == 4242 and job["recipe"]["steps"] == 8 and job["recipe"]["width"] == 64

    pg.locator("#gallery-grid figure").first.click()
    pg.locator("#recipe-dialog").wait_for(state="visible")
    recipe = json.loads(pg.inner_text("#recipe-text"))
    assert recipe["prompt"] == "1girl, ui test" and recipe["seed"] == 4242
    shot(pg, "02-recipe")

    # Reuse: change everything first, then restore it from the gallery.
    pg.click("#dialog-close")
    pg.fill("#prompt", "something else")
    set_value(pg, "#steps", 3)
    pg.uncheck("#seed-lock")
    set_value(pg, "#seed", "")
    pg.locator("#gallery-grid figure").first.click()
    pg.click("#reuse")
    assert pg.input_value("#prompt") == "1girl, ui test"
    assert pg.input_value("#seed") == "4242" and pg.is_checked("#seed-lock")
    assert (pg.input_value("#steps"), pg.input_value("#width")) == ("8", "64")
    generate_and_wait(pg)
    again = latest_job(server)
    assert again["id"] != job["id"]
    keep = ("prompt", "negative_prompt", "seed", "steps", "width", "height", "cfg", "sampler", "scheduler")
    assert {k: again["recipe"][k] for k in keep} == {k: job["recipe"][k] for k in keep}
    a = np.asarray(Image.open(server.ctx.outputs_dir / job["outputs"][0]))
    b = np.asarray(Image.open(server.ctx.outputs_dir / again["outputs"][0]))
    assert np.array_equal(a, b)  # same settings, same image
    shot(pg, "03-reused")


def test_paint_mask_and_inpaint(page, server, tmp_path):
    pg = page
    rng = np.random.default_rng(3)
    init = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    init_path = tmp_path / "init.png"
    Image.fromarray(init).save(init_path)
    pg.click("#tab-inpaint")
    pg.set_input_files("#init-file", str(init_path))
    pg.wait_for_function("document.querySelector('#mask-canvas').width === 64")
    pg.fill("#prompt", "inpaint test")
    set_value(pg, "#steps", 4)
    set_value(pg, "#mask-blur", 0)
    pg.evaluate(
        "() => { const d = document.querySelector('#denoise'); d.value = '0.9'; "
        "d.dispatchEvent(new Event('input')); }"
    )
    # Paint a vertical stroke over the right third of the image.
    box = pg.locator("#mask-canvas").bounding_box()
    x = box["x"] + box["width"] * 0.8
    pg.mouse.move(x, box["y"] + 2)
    pg.mouse.down()
    for i in range(1, 11):
        pg.mouse.move(x, box["y"] + box["height"] * i / 10 - 2, steps=2)
    pg.mouse.up()
    shot(pg, "04-mask-painted")
    pg.click("#generate")
    pg.locator("#queue-list li[data-status=done]").first.wait_for(timeout=120_000)
    job = wait_job(httpx.Client(base_url=server.url), latest_job(server)["id"])
    assert job["kind"] == "inpaint" and job["status"] == "done"
    out = np.asarray(Image.open(server.ctx.outputs_dir / job["outputs"][0]))
    assert np.array_equal(out[:, :32], init[:, :32])  # unpainted side kept exactly
    assert np.abs(out[:, 48:].astype(int) - init[:, 48:]).mean() > 5  # the painted stroke was repainted
    shot(pg, "05-inpainted")


def test_cancel_a_queued_job(page, server):
    pg = page
    pg.fill("#prompt", "long running")
    small_settings(pg, 150)
    pg.click("#generate")
    pg.locator("#queue-list li[data-status=running]").first.wait_for(timeout=60_000)
    pg.fill("#prompt", "to be cancelled")
    pg.click("#generate")
    queued = pg.locator("#queue-list li[data-status=queued]").first
    queued.wait_for()
    queued_id = queued.get_attribute("data-id")
    shot(pg, "06-queued")
    queued.locator(".cancel").click()
    pg.locator(f'#queue-list li[data-id="{queued_id}"][data-status=cancelled]').wait_for()
    running = pg.locator("#queue-list li[data-status=running]").first
    running_id = running.get_attribute("data-id")
    running.locator(".cancel").click()  # a running job stops at its next step
    pg.locator(f'#queue-list li[data-id="{running_id}"][data-status=cancelled]').wait_for(timeout=60_000)
    shot(pg, "07-cancelled")
    with httpx.Client(base_url=server.url) as c:
        assert c.get(f"/api/jobs/{queued_id}").json()["outputs"] == []
        stopped = c.get(f"/api/jobs/{running_id}").json()
    assert stopped["status"] == "cancelled" and stopped["step"] < 150
    deadline = time.monotonic() + 5
    while pg.inner_text("#status") != "idle" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pg.inner_text("#status") == "idle"


def generate_and_wait(pg) -> None:
    """Click Generate and wait for one more image in the gallery (earlier tests' stay there)."""
    before = pg.locator("#gallery-grid figure").count()
    pg.click("#generate")
    more = f"document.querySelectorAll('#gallery-grid figure').length > {before}"
    pg.wait_for_function(more, timeout=120_000)


def test_control_unit_generate_and_reuse(page, server):
    """A ControlNet-LLLite unit from the page (image, invert preview, strength) makes the pixels the
    native API makes with the same unit; reuse from the gallery restores the unit and its image."""
    pg = page
    control = LLLITE_PATCHES.parent / "inputs" / "control_128.png"
    pg.fill("#prompt", "1girl, control test")
    small_settings(pg, 3)
    set_value(pg, "#seed", 11)
    pg.click("#wf-control summary")
    unit = pg.get_by_role("group", name="ControlNet unit 1")
    unit.get_by_label("Control image").set_input_files(str(control))
    sync_api.expect(unit.get_by_role("checkbox", name="Unit 1")).to_be_checked()  # on once it has an image
    unit.get_by_label("Control model").select_option("anima_lllite_tiny_aspp")
    unit.get_by_label("Preprocessor").select_option("invert")
    unit.get_by_role("button", name="Preview").click()
    sync_api.expect(unit.get_by_role("img", name="preprocessed control image")).to_be_visible()
    unit.get_by_label("Strength").fill("0.8")
    shot(pg, "08-control-unit")
    generate_and_wait(pg)
    first = latest_job(server)
    assert first["status"] == "done" and first["recipe"]["controls"][0]["strength"] == 0.8
    assert set(first["inputs"]) == {"control0-image"}

    # Reuse: the unit comes back (its image fetched from the server), generate again: same pixels.
    unit.get_by_label("Strength").fill("0.1")
    pg.get_by_role("checkbox", name="Unit 1").uncheck()
    job_id = first["id"]
    pg.locator(f'#gallery-grid figure[data-job="{job_id}"]').click()
    pg.click("#reuse")
    sync_api.expect(unit.get_by_role("img", name="control image")).to_be_visible()
    assert unit.get_by_role("checkbox", name="Unit 1").is_checked()
    assert unit.get_by_label("Strength").input_value() == "0.8"
    assert unit.get_by_label("Preprocessor").input_value() == "none"  # the stored image is the inverted one
    generate_and_wait(pg)
    again = latest_job(server)
    assert again["id"] != first["id"] and again["status"] == "done"

    # The native API with the same unit (the inverted image, as the page sent it).
    keep = ("prompt", "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "seed")
    inverted = Image.fromarray(255 - np.asarray(Image.open(control).convert("RGB")))
    buf = io.BytesIO()
    inverted.save(buf, format="PNG")
    unit_in = {"model": "anima_lllite_tiny_aspp", "image": base64.b64encode(buf.getvalue()).decode(),
               "strength": 0.8}  # fmt: skip
    with httpx.Client(base_url=server.url, timeout=60) as c:
        body = {"recipe": {k: first["recipe"][k] for k in keep}, "controls": [unit_in]}
        native = wait_job(c, c.post("/api/jobs", json=body).json()["id"], timeout=120)
    outs = [np.asarray(Image.open(server.ctx.outputs_dir / j["outputs"][0])) for j in (first, again, native)]
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    shot(pg, "09-control-reused")
