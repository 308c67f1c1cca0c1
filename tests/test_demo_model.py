"""The bundled DEMO model: present, small, labelled, loadable by the normal loaders, and it draws shapes."""

from __future__ import annotations

import json

import pytest
import torch

from anima.demo import FILE_NAMES, MODEL_DIR, RECIPE_DEFAULTS, default_model
from anima.errors import AnimaError


@pytest.fixture(scope="module")
def pipe():
    from anima.demo.runner import load_demo_pipeline

    return load_demo_pipeline()


def test_files_are_complete_small_and_labelled() -> None:
    m = default_model()
    total = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert total <= 20 * 1024 * 1024
    readme = (MODEL_DIR / "README.md").read_text()
    assert "demo" in readme.lower() and "not Anima" in readme
    from anima.weights.safetensors import read_header

    for name in FILE_NAMES.values():
        assert "DEMO" in read_header(MODEL_DIR / name).metadata["anima_demo"]
    assert m.qwen_tokenizer.is_dir() and m.t5_tokenizer.is_dir()
    assert "DEMO" in m.notice
    record = json.loads(readme.split("```json", 1)[1].split("```", 1)[0])
    assert record["evaluation"]["held_out_prompts"] == 50


def test_incomplete_folder_is_refused(tmp_path) -> None:
    with pytest.raises(AnimaError, match="incomplete"):
        default_model(tmp_path)


def test_loads_through_the_normal_loaders(pipe) -> None:
    from anima.weights import file_kinds
    from anima.weights.loading import read_headers

    m = default_model()
    for path, kind in (
        (m.dit, file_kinds.DIT),
        (m.text_encoder, file_kinds.TEXT_ENCODER),
        (m.vae, file_kinds.VAE),
    ):
        assert file_kinds.detect(read_headers(path)[1]).kind == kind
    assert pipe.dit.cfg.model_channels == 128
    assert pipe.vae.cfg.dim == 12


def test_generates_the_prompted_scene(pipe) -> None:
    from anima.demo.evaluate import detect
    from anima.recipe import Recipe

    prompts = {
        "red circle, blue background, top left": ("red", "circle", "blue", "top left"),
        "a yellow square in the centre on a black background": ("yellow", "square", "black", "centre"),
        "white triangle, green background, bottom right": ("white", "triangle", "green", "bottom right"),
    }
    right = 0
    for i, (prompt, want) in enumerate(prompts.items()):
        result = pipe.generate(Recipe(prompt=prompt, seed=i, **RECIPE_DEFAULTS))
        assert result.images.shape == (1, 64, 64, 3) and torch.isfinite(result.images).all()
        right += detect(result.images[0].numpy()).matches(want)
    assert right >= 2


@pytest.mark.usefixtures("isolated_home")
def test_generate_without_a_model_uses_the_demo(tmp_path, capsys: pytest.CaptureFixture) -> None:
    """The README's first command: no model anywhere, no model flags -> the demo, and it says so."""
    from PIL import Image

    from anima.cli import main
    from anima.demo import NOTICE
    from anima.demo.evaluate import detect

    out = tmp_path / "demo.png"
    assert main(["generate", "red circle, blue background, top left", "--seed", "3", "-o", str(out)]) == 0
    assert NOTICE in capsys.readouterr().err
    with Image.open(out) as im:
        assert im.size == (64, 64)
        recipe = json.loads(im.info["anima_recipe"])
        d = detect(im)
    assert recipe["model"] == "anima-demo-dit" and recipe["dtype"] == "fp32"
    assert recipe["negative_prompt"] == ""
    assert (d.colour, d.background) == ("red", "blue")


@pytest.mark.usefixtures("isolated_home")
def test_demo_is_a_fallback_not_an_override(tmp_path, capsys: pytest.CaptureFixture) -> None:
    from anima.cli import main

    # A model that was asked for and is missing is an error, never silently the demo.
    assert main(["generate", "cat", "--model", "anima-base-v1.0", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "no Anima model found" in err and NOTICE_TEXT not in err
    assert not (tmp_path / "x.png").exists()
    # `--model demo` picks it explicitly; explicit flags win over its defaults.
    out = tmp_path / "d.png"
    argv = ["generate", "cat", "--model", "demo", "--size", "32x32", "--steps", "2", "-o", str(out)]
    assert main(argv) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (32, 32) and json.loads(im.info["anima_recipe"])["steps"] == 2
    assert main(["models"]) == 0
    assert "anima-demo" in capsys.readouterr().out


NOTICE_TEXT = "bundled DEMO model"
