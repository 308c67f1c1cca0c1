"""img2img from the CLI: the image's own size, Lanczos resize with --size, fixture match, reproduction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, TOKENIZERS
from PIL import Image

from anima.cli import main
from anima.imageio import read_png_text, read_recipe
from anima.interop.a1111 import setting_pairs

CASE = next(c for c in json.loads((TINY / "cases.json").read_text())["cases"] if c["kind"] == "img2img")
INIT = TINY / CASE["files"]["init_image"]
W = TINY / "weights"
MODEL_FLAGS = [
    "--dit", str(W / "anima_tiny_dit.safetensors"),
    "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
    "--vae", str(W / "wan21_tiny_vae.safetensors"),
    "--tokenizer-dir", str(TOKENIZERS),
    "--dtype", "fp32", "--no-progress",
]  # fmt: skip


def _case_flags() -> list[str]:
    c = CASE
    return [
        c["prompt"], "--negative-prompt", c["negative_prompt"], "--steps", str(c["steps"]),
        "--cfg", str(c["cfg"]), "--sampler", c["sampler"], "--scheduler", c["scheduler"],
        "--seed", str(c["seed"]), "--denoise", str(c["denoise"]), "--init-image", str(INIT),
    ]  # fmt: skip


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_cli_img2img_matches_the_fixture_and_takes_the_image_size(tmp_path, capsys) -> None:
    out = tmp_path / "i2i.png"
    assert (
        main(["generate", *_case_flags(), *MODEL_FLAGS, "-o", str(out)]) == 0
    )  # no --size: the image's 128x128
    diff = np.abs(_pixels(out) - _pixels(TINY / CASE["files"]["pngs"][0]))
    print(f"img2img CLI vs ComfyUI: max {diff.max()}/255, mean {diff.mean():.4f}/255")
    assert diff.max() <= 1
    recipe = read_recipe(out)
    assert (recipe.width, recipe.height, recipe.denoise) == (128, 128, 0.6)
    assert dict(setting_pairs(recipe))["Init image"] == str(INIT.resolve())

    # --from-png finds the recorded init image and reproduces the same bytes.
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(_pixels(again), _pixels(out))


def test_size_not_multiple_of_8_is_centre_cropped_like_comfyui_vae_encode(tmp_path) -> None:
    """Issue 14: ComfyUI takes any multiple of 8 and its VAEEncode centre-crops the rest, offset
    (side % 8) // 2: 130x121 -> 128x120 from (1, 0). The same image cropped by hand gives the same PNG."""
    odd, cropped = tmp_path / "odd.png", tmp_path / "cropped.png"
    Image.open(INIT).convert("RGB").resize((130, 121)).save(odd)
    Image.open(odd).crop((1, 0, 129, 120)).save(cropped)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for src, out in ((odd, a), (cropped, b)):
        argv = ["generate", "p", "--init-image", str(src), "--denoise", "0.5", "--seed", "3", *MODEL_FLAGS]
        assert main([*argv, "-o", str(out)]) == 0
    assert Image.open(a).size == (128, 120)
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    tiny = tmp_path / "tiny.png"
    Image.open(INIT).convert("RGB").resize((12, 12)).save(tiny)  # too small to take at all
    assert (
        main(["generate", "p", "--init-image", str(tiny), *MODEL_FLAGS, "-o", str(tmp_path / "t.png")]) == 2
    )
    assert not (tmp_path / "t.png").exists()


def test_explicit_size_resizes_with_lanczos(tmp_path) -> None:
    out = tmp_path / "big.png"
    flags = [
        "generate",
        "p",
        "--init-image",
        str(INIT),
        "--denoise",
        "0.5",
        "--size",
        "160x96",
        "--steps",
        "2",
    ]
    assert main([*flags, "--seed", "1", *MODEL_FLAGS, "-o", str(out)]) == 0
    assert Image.open(out).size == (160, 96)
    assert (read_recipe(out).width, read_recipe(out).height) == (160, 96)


@pytest.mark.parametrize("denoise", ["0", "1.5", "-0.2", "nan"])
def test_denoise_outside_0_1_is_one_line_and_writes_nothing(tmp_path, capsys, denoise) -> None:
    out = tmp_path / "x.png"
    rc = main(
        ["generate", "p", "--init-image", str(INIT), "--denoise", denoise, *MODEL_FLAGS, "-o", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "denoise" in err[0]
    assert not out.exists()


def test_changed_init_image_is_refused_on_reproduction(tmp_path, capsys) -> None:
    src = tmp_path / "init.png"
    Image.open(INIT).convert("RGB").save(src)
    out = tmp_path / "o.png"
    flags = ["generate", "p", "--init-image", str(src), "--denoise", "0.5", "--steps", "1", "--seed", "2"]
    assert main([*flags, *MODEL_FLAGS, "-o", str(out)]) == 0
    assert "Init image hash" in read_png_text(out)["parameters"]
    Image.open(INIT).convert("RGB").rotate(90).save(src)
    capsys.readouterr()
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 2
    assert "has changed since" in capsys.readouterr().err
    assert not again.exists()
