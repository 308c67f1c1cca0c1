"""`anima explore`: jobs, the gallery over 20 artists x 2 seeds, compare sheets, kill + restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, TINY, TOKENIZERS
from PIL import Image

from anima.cli import main
from anima.errors import AnimaError
from anima.explore import artist_jobs, compare_jobs, parse_seeds
from anima.recipe import Recipe

W = TINY / "weights"
MODEL = [
    "--dit", str(W / "anima_tiny_dit.safetensors"), "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
    "--vae", str(W / "wan21_tiny_vae.safetensors"), "--tokenizer-dir", str(TOKENIZERS), "--dtype", "fp32",
]  # fmt: skip
FAST = ["--size", "32x32", "--steps", "2", "--sampler", "euler", "--cfg", "1", "--no-progress"]
# The bundled demo model at its own settings (64x64, fp32), fewer steps.
DEMO = ["--model", "demo", "--steps", "8", "--no-progress"]
ARTISTS = [
    "dairi", "ebifurya", "hammer \\(sunset beach\\)", "haruyama kazunori", "itomugi-kun", "yaegashi nan",
    "mizuki hitoshi", "bkub", "kou hiyoyo", "naga u", "ojipon", "tani takeshi", "pageratta", "inoino",
    "tony taka", "ixy", "chihuri", "hews", "yohane", "kantoku", "kani biimu", "avogado6",
]  # fmt: skip


def write_artists(path: Path) -> Path:
    header = "# test list in the style explorer's layout\n\n===\nARTIST LIST STARTS BELOW:\n===\n"
    path.write_text(header + "".join(f"@{a}\n" for a in ARTISTS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 artists x 2 seeds rendered with the bundled demo model."""
    root = tmp_path_factory.mktemp("explore")
    artists = write_artists(root / "artists.txt")
    out = root / "gallery"
    argv = ["explore", "--artists", str(artists), "--prompt", "{artist}, red circle, blue background"]
    assert main([*argv, "--seeds", "1,2", "--limit", "20", "--out", str(out), *DEMO]) == 0
    return out


def test_parse_seeds() -> None:
    assert parse_seeds("1,2, 5-7,2") == [1, 2, 5, 6, 7]
    for bad in ("", "a", "1,,x"):
        with pytest.raises(AnimaError, match="seed"):
            parse_seeds(bad)


def test_artist_and_compare_jobs() -> None:
    base = Recipe(prompt="masterpiece, 1girl, hatsune miku, smile", width=64, height=64)
    jobs = artist_jobs(base, ["hammer (sunset beach)"], [1, 2])
    assert [j.recipe.prompt for j in jobs] == [
        "masterpiece, 1girl, hatsune miku, @hammer \\(sunset beach\\), smile"
    ] * 2
    assert [j.recipe.seed for j in jobs] == [1, 2]
    cmp = compare_jobs(base, ["@a", "@b", "c"], [1], mix="blend")
    assert [dict(j.info)["tag"] for j in cmp] == ["@a", "@b", "@c", "@a, @b", "@a, @c", "@b, @c"]
    edit = compare_jobs(base, ["@a", "@b"], [1], mix="edit")
    assert "[@a:@b:0.5]" in edit[-1].recipe.prompt
    with pytest.raises(AnimaError, match="at least two"):
        compare_jobs(base, ["@a"], [1])


def test_gallery_over_20_artists(gallery: Path) -> None:
    data = json.loads((gallery / "gallery.json").read_text())
    assert [a["name"] for a in data["artists"]] == [a.replace("\\", "") for a in ARTISTS[:20]]
    for a in data["artists"]:
        assert a["tag"].startswith("@") and [im["seed"] for im in a["images"]] == [1, 2]
        for im in a["images"]:
            assert (gallery / im["file"]).is_file() and (gallery / im["thumb"]).is_file()
            assert a["tag"] in im["recipe"]["prompt"] and "Seed: " in im["parameters"]
    assert len(list((gallery / "images").glob("*.png"))) == 40
    page = (gallery / "index.html").read_text()
    assert '"@hammer \\\\(sunset beach\\\\)"' in page  # the data is embedded: no server needed
    manifest = json.loads((gallery / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 40 and {j["status"] for j in manifest["jobs"]} == {"done"}
    for p in (gallery / "images").glob("*.png"):
        with Image.open(p) as im:  # made by the demo model, at its own size
            assert im.size == (64, 64) and json.loads(im.info["anima_recipe"])["model"] == "anima-demo-dit"


def test_rerun_renders_nothing(gallery: Path, capsys: pytest.CaptureFixture) -> None:
    artists = write_artists(gallery.parent / "artists2.txt")
    argv = ["explore", "--artists", str(artists), "--prompt", "{artist}, red circle, blue background"]
    assert main([*argv, "--seeds", "1,2", "--limit", "20", "--out", str(gallery), *DEMO]) == 0
    assert "0 rendered, 40 already done" in capsys.readouterr().out


def test_compare_sheet(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    argv = ["explore", "--compare", "@dairi", "@bkub", "--prompt", "1girl", "--seeds", "3", "--out", str(out)]
    assert main([*argv, *FAST, *MODEL]) == 0
    with Image.open(out / "compare.png") as sheet:
        assert sheet.size == (3 * 256, 24 + 256)  # dairi, bkub and the blend; one seed
        assert sheet.getpixel((128, 24 + 128)) != (24, 24, 28)  # images are scaled up to fill the cells


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "o"
    base = ["explore", "--prompt", "1girl", "--out", str(out), *FAST, *MODEL]
    assert main([*base, "--artists", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt not found" in capsys.readouterr().err
    assert main([*base, "--artists", str(tmp_path / "missing.txt"), "--seeds", "x"]) == 2
    assert main(base) == 2
    assert "either --artists" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_killed_run_restarts_with_each_image_rendered_once(tmp_path: Path) -> None:
    artists = write_artists(tmp_path / "artists.txt")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "anima", "explore", "--artists", str(artists), "--prompt", "1girl",
        "--seeds", "1,2", "--limit", "3", "--out", str(out), *DEMO,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    index = out / "index.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if index.is_file() and len(index.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = len(list((out / "images").glob("*.png")))
    assert 2 <= first < 6
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rendered_again = int(done.stdout.split(" rendered")[0].split()[-1])
    assert rendered_again == 6 - first  # nothing that was on disk was rendered a second time
    keys = Counter(json.loads(ln)["key"] for ln in index.read_text().splitlines())
    assert len(keys) == 6 and set(keys.values()) == {1}
    assert len(list((out / "images").glob("*.png"))) == 6
    assert not list((out / "images").glob(".*.tmp"))
    for p in (out / "images").glob("*.png"):
        with Image.open(p) as im:
            im.load()  # every file is a complete PNG
    data = json.loads((out / "gallery.json").read_text())
    assert sum(len(a["images"]) for a in data["artists"]) == 6


@pytest.mark.slow
def test_gallery_in_chromium(gallery: Path) -> None:
    """Debian's chromium opens the static page from disk: search, sort, copy a tag, keep a favourite."""
    from playwright.sync_api import expect, sync_playwright  # test dependency, with Debian's chromium

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        try:
            context = browser.new_context()
            context.grant_permissions(["clipboard-read", "clipboard-write"])
            page = context.new_page()
            page.goto((gallery / "index.html").as_uri())
            assert page.locator(".card").count() == 20
            assert page.locator("#count").text_content() == "20 / 20 artists"
            assert page.evaluate("document.querySelector('.shot img').decode().then(() => 1)") == 1
            page.fill("#search", "Hammer_")
            assert page.locator(".card").count() == 1
            page.click(".card .copy")
            tag = "@hammer \\(sunset beach\\)"
            page.wait_for_function("document.body.dataset.copied !== undefined")
            assert page.evaluate("navigator.clipboard.readText()") == tag
            assert page.locator("#toast").text_content() == "copied " + tag
            page.click(".card .fav-btn")
            # expect() waits for the page to catch up; a bare count() raced it (seen once in CI)
            expect(page.locator(".card.fav")).to_have_count(1)
            # The page's localStorage write reaches the browser's store asynchronously, and a reload
            # right after it read the old, empty list under load (2 of ~10 loaded runs): wait until
            # a second page of the same origin sees it, i.e. until it is stored for the next load.
            stored = "(localStorage.getItem(FAV_KEY) || '').includes('hammer')"
            page.wait_for_function(stored)
            other = context.new_page()
            other.goto((gallery / "index.html").as_uri())
            other.wait_for_function(stored)
            other.close()
            page.fill("#search", "")
            page.select_option("#sort", "name-desc")
            assert page.locator(".card").first.get_attribute("data-name") == "yohane"
            page.reload()
            page.check("#favonly")
            expect(page.locator(".card")).to_have_count(1)
            assert page.locator(".card.fav").get_attribute("data-name") == "hammer (sunset beach)"
            page.locator(".card details summary").first.click()
            assert "Seed: 1" in page.locator(".card details pre").first.text_content()
        finally:
            browser.close()
