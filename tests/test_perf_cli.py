"""`anima generate` speed/memory flags end to end on the tiny model, and their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_MODEL_ARGS, isolate_home
from PIL import Image

from anima.cli import main

W = TINY / "weights"
MODEL = TINY_MODEL_ARGS
FAST = [
    "--size",
    "64x64",
    "--steps",
    "3",
    "--dtype",
    "fp32",
    "--no-progress",
    "--sampler",
    "euler",
    "--seed",
    "3",
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_home(tmp_path, monkeypatch)


def test_flags_run_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "a.png"
    flags = [
        "--weights",
        "int8",
        "--vram-budget",
        "0.5",
        "--profile",
        "--attention",
        "sdpa",
        "--step-cache",
        "0.1",
    ]
    assert main(["generate", "1girl", *MODEL, *FAST, *flags, "-o", str(out)]) == 0
    assert out.exists()
    err = capsys.readouterr().err
    assert "DiT layers in int8" in err and "memory: budget 0.5 GB" in err and "step cache on" in err
    table = err[err.index("part") :].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["text", "dit", "vae"]
    assert "peak RSS" in table[0]
    # What changes the image is in the PNG, and --from-png makes it the same way again.
    with Image.open(out) as im:
        recipe = json.loads(im.info["anima_recipe"])
        assert "Weights: int8" in im.info["parameters"] and "Step cache: 0.1" in im.info["parameters"]
    assert recipe["perf"]["weights"] == "int8" and recipe["perf"]["step_cache"] == 0.1
    again = tmp_path / "b.png"
    assert main(["generate", "--from-png", str(out), *MODEL, "--no-progress", "-o", str(again)]) == 0
    assert "DiT layers in int8" in capsys.readouterr().err
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--vram-budget", "lots"],
            "memory budget takes a number of GB or 'auto', got 'lots' (--vram-budget)",
        ),
        (["--vram-budget", "-1"], "memory budget must be > 0 GB, got -1 (--vram-budget)"),
        (["--step-cache", "2"], "step cache threshold must be in (0, 1), e.g. 0.1; got 2.0 (--step-cache)"),
        (["--attention", "flash9"], "unknown attention backend"),
        (["--vram-budget", "0.01"], "too small"),
    ],
)
def test_bad_flags_fail_in_one_line_and_write_nothing(tmp_path, capsys, flags, message) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "cat", *MODEL, *FAST, *flags, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err), err
    assert not out.exists()


_CORE = {"prompt": "cat", "width": 64, "height": 64, "steps": 2, "sampler": "euler"}


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        (
            {"format": "anima-recipe/2", **_CORE, "perf": {"step_cache": 5}},
            "step cache threshold must be in (0, 1)",
        ),
        (
            {"format": "anima-recipe/1", **_CORE, "extra": {"Step cache": "often"}},
            "cannot read Step cache 'often'",
        ),
        ({"format": "anima-recipe/2", **_CORE, "perf": {"weights": "nf4"}}, "unknown weights format 'nf4'"),
        ({"format": "anima-recipe/1", **_CORE, "extra": {"Weights": "nf4"}}, "unknown weights format 'nf4'"),
    ],
)
def test_bad_recorded_settings_fail_in_one_line(tmp_path, capsys, recorded, message) -> None:
    """A PNG's recorded perf settings get the same checks as the flags (this version's recipe JSON
    and the one earlier versions wrote)."""
    from PIL import PngImagePlugin

    png = tmp_path / "made.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("anima_recipe", json.dumps(recorded))
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(png, pnginfo=info)
    out = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(png), *MODEL, "--no-progress", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe" in err[0] and message in err[0], err
    assert not out.exists()
