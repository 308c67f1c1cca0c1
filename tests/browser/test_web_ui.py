"""The web UI as a newcomer meets it: `anima serve` with no model arguments on a fresh machine (an
empty home: it serves the bundled demo model), in Playwright's chromium. Screenshots of each step
go to tests/artifacts/browser/web-ui-*.png."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time

import httpx
import pytest
from conftest import REPO
from PIL import Image
from playwright import sync_api
from server_support import ServerProcess, fresh_user_env, wait_job
from test_server_ui import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.slow

ARTISTS = ["wlop", "wlo_test_artist", "ilya kuvshinov", "sakimichan", "wada arco"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh")
    artists = root / "artists.txt"
    artists.write_text("\n".join(ARTISTS) + "\n", encoding="utf-8")
    srv = ServerProcess(root / "data", "--artists", str(artists), home=root / "home").start(timeout=120)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, fresh):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(fresh.url + "/")
    yield pg
    context.close()
    assert not errors, errors


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"web-ui-{name}.png"), full_page=True)


def generate_button(pg):
    return pg.get_by_role("button", name="Generate", exact=True)


def ready(pg) -> None:
    sync_api.expect(generate_button(pg)).to_be_enabled(timeout=30_000)


def done_jobs(srv) -> list[dict]:
    return httpx.get(srv.url + "/api/jobs", params={"status": "done", "limit": 200}).json()["items"]


def test_first_click_with_the_defaults(page, fresh):
    pg = page
    ready(pg)
    banner = pg.get_by_role("note")
    sync_api.expect(banner).to_contain_text("DEMO model")
    # The demo's own defaults, not Anima's 1024x1024 x 30 steps.
    shown = (pg.input_value("#width"), pg.input_value("#height"), pg.input_value("#steps"))
    assert shown == ("64", "64", "20")
    shot(pg, "01-fresh")
    before = len(done_jobs(fresh))
    start = time.monotonic()
    generate_button(pg).click()
    gallery = pg.get_by_role("region", name="Gallery")
    gallery.locator("figure img").first.wait_for(timeout=60_000)
    took = time.monotonic() - start
    assert took < 60, f"the first image took {took:.1f} s"
    assert len(done_jobs(fresh)) == before + 1
    shot(pg, "02-first-image")


def test_generate_is_disabled_until_the_page_is_ready(browser, fresh):
    context = browser.new_context()
    pg = context.new_page()
    # Hold /api/info back: the button must stay disabled and Ctrl+Enter must send nothing.
    held: list = []
    pg.route("**/api/info", lambda route: held.append(route))
    posted: list[str] = []
    pg.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    pg.goto(fresh.url + "/")
    sync_api.expect(generate_button(pg)).to_be_disabled()
    pg.get_by_label("Prompt", exact=True).fill("too early")
    pg.keyboard.press("Control+Enter")
    time.sleep(0.5)
    assert posted == [] and pg.inner_text("#error") == ""
    held[0].continue_()
    ready(pg)
    context.close()


def test_dropping_an_anima_png_fills_the_form(page, fresh, tmp_path):
    out = tmp_path / "made.png"
    env = {**fresh_user_env(tmp_path / "home"), "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "anima", "generate", "--prompt", "a blue square, dropped", "--seed", "31337",
         "--sampler", "euler", "--steps", "4", "--output", str(out), "--no-progress"],
        check=True, cwd=REPO, env={**os.environ, **env}, capture_output=True,
    )  # fmt: skip
    pg = page
    ready(pg)
    b64 = base64.b64encode(out.read_bytes()).decode()
    pg.evaluate(
        """([b64, name]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, { type: "image/png" }));
          const target = document.querySelector("#gallery");
          for (const type of ["dragenter", "dragover", "drop"]) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
          }
        }""",
        [b64, out.name],
    )
    sync_api.expect(pg.locator("#png-params")).to_contain_text("31337")
    sync_api.expect(pg.locator("#png-format")).to_contain_text("anima")
    shot(pg, "03-png-info")
    pg.get_by_role("button", name="Send to txt2img").click()
    assert pg.get_by_label("Prompt", exact=True).input_value() == "a blue square, dropped"
    assert pg.input_value("#seed") == "31337" and pg.input_value("#sampler") == "euler"
    assert pg.input_value("#steps") == "4"
    shot(pg, "04-filled-from-png")
    # The PNG info file input does the same.
    pg.click("#tab-pnginfo")
    pg.get_by_label("PNG info").set_input_files(str(out))
    sync_api.expect(pg.locator("#png-params")).to_contain_text("a blue square, dropped")


def test_artist_completion(page):
    pg = page
    ready(pg)
    box = pg.get_by_label("Prompt", exact=True)
    box.click()
    box.press_sequentially("1girl, @wl", delay=30)
    listbox = pg.get_by_role("listbox")
    sync_api.expect(listbox).to_be_visible()
    options = listbox.get_by_role("option")
    sync_api.expect(options).to_have_count(2)
    assert options.all_inner_texts() == ["wlop", "wlo test artist"]  # normalised names
    shot(pg, "05-artist-completion")
    box.press("Enter")  # takes the first
    assert box.input_value() == "1girl, @wlop, "
    sync_api.expect(listbox).to_be_hidden()


def test_hires_job_has_the_planned_size(page, fresh):
    pg = page
    ready(pg)
    pg.get_by_label("Prompt", exact=True).fill("hires from the page")
    pg.locator("#steps").fill("6")
    pg.click("#wf-hires summary")
    pg.check("#hires-on")
    pg.fill("#hires-scale", "2.5")
    pg.dispatch_event("#hires-scale", "change")
    pg.fill("#hires-steps", "3")
    pg.dispatch_event("#hires-steps", "change")
    plan = pg.locator("#hires-plan")
    sync_api.expect(plan).to_have_attribute("data-final", "160x160")
    shot(pg, "06-hires-plan")
    generate_button(pg).click()
    pg.locator("#queue-list li[data-status=done]").first.wait_for(timeout=120_000)
    job = wait_job(httpx.Client(base_url=fresh.url), done_jobs(fresh)[0]["id"])
    assert job["recipe"]["prompt"] == "hires from the page"
    assert job["settings"]["hires_scale"] == 2.5 and job["settings"]["hires_steps"] == 3
    url = fresh.url + job["urls"][0]
    image = Image.open(io.BytesIO(httpx.get(url).content))
    assert image.size == (160, 160)
    shot(pg, "07-hires-done")
