"""Image I/O: 8-bit conversion against ComfyUI's PNGs, A1111 infotext, PNG metadata, atomic writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, load_st
from PIL import Image, PngImagePlugin

from anima.errors import AnimaError
from anima.imageio import (
    atomic_write,
    load_image,
    output_paths,
    read_png_text,
    read_recipe,
    save_png,
    to_uint8,
)
from anima.interop.a1111 import SAMPLER_LABELS, SCHEDULER_LABELS
from anima.interop.a1111 import infotext as a1111_parameters
from anima.interop.a1111 import parse_infotext as parse_a1111_parameters
from anima.interop.a1111 import recipe_from_infotext as recipe_from_a1111
from anima.recipe import Recipe

E2E_CASES = sorted(p.name for p in (TINY / "e2e").iterdir())


# --------------------------------------------------------------------- pixels
@pytest.mark.parametrize("case", E2E_CASES)
def test_to_uint8_matches_comfyui_pngs_exactly(case: str) -> None:
    images = load_st(TINY / "e2e" / case / "outputs.safetensors")["image"]
    got = to_uint8(images)
    assert got.dtype == np.uint8 and got.shape == tuple(images.shape)
    for b in range(images.shape[0]):
        ref = np.asarray(Image.open(TINY / "e2e" / case / f"image_{b}.png"))
        assert np.array_equal(got[b], ref), f"{case} image {b}: {(got[b] != ref).sum()} pixels differ"


def test_to_uint8_vae_decode_png_and_numpy_input() -> None:
    image = load_st(TINY / "components" / "vae.safetensors")["decode.image"]
    ref = np.asarray(Image.open(TINY / "components" / "vae_decode.png"))
    assert np.array_equal(to_uint8(image)[0], ref)
    assert np.array_equal(to_uint8(image[0].numpy()), ref)  # [H,W,3] numpy works too


def test_to_uint8_truncates_and_clips() -> None:
    v = (
        torch.tensor([0.0, 0.5, 0.999, 1.0, -0.2, 1.7, 10 / 255, float("nan")])
        .reshape(1, 1, 8, 1)
        .expand(1, 1, 8, 3)
    )
    got = to_uint8(v)[0, 0, :, 0].tolist()
    # 0.5 * 255 = 127.5 -> 127 (rounding would give 128); 0.999 -> 254.7 -> 254; NaN -> 0.
    assert got == [0, 127, 254, 255, 0, 255, 10, 0]
    with pytest.raises(ValueError, match="RGB"):
        to_uint8(np.zeros((1, 4, 4, 4), np.float32))


def test_load_image_matches_comfyui_encoder_input() -> None:
    got = load_image(TINY / "components" / "vae_encode_input.png")
    ref = load_st(TINY / "components" / "vae.safetensors")["encode.image"]
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert torch.equal(got, ref)
    with pytest.raises(AnimaError, match="no such image"):
        load_image(TINY / "missing.png")


# --------------------------------------------------------------------- A1111 infotext
def test_a1111_format_is_pinned() -> None:
    r = Recipe(
        "masterpiece, 1girl",
        seed=123,
        model="anima-base-v1.0",
        model_hash="abcd123456",
    )
    assert a1111_parameters(r) == (
        "masterpiece, 1girl\n"
        "Negative prompt: worst quality, low quality, score_1, score_2, score_3, "
        "blurry, jpeg artifacts, sepia\n"
        "Steps: 30, Sampler: ER SDE, Schedule type: Simple, CFG scale: 4, Seed: 123, Size: 1024x1024, "
        "Model hash: abcd123456, Model: anima-base-v1.0, Shift: 3"
    )
    r2 = r.with_(
        negative_prompt="",
        cfg=4.5,
        denoise=0.6,
        batch_size=2,
        sampler="euler_ancestral",
        scheduler="ddim_uniform",
        model="a, b",
        model_hash="",
        loras=(("turbo", 0.5),),
    )
    assert a1111_parameters(r2, batch_pos=1) == (
        "masterpiece, 1girl\n"
        "Steps: 30, Sampler: Euler a, Schedule type: DDIM, CFG scale: 4.5, Seed: 123, Size: 1024x1024, "
        'Model: "a, b", Shift: 3, Denoising strength: 0.6, Batch size: 2, Batch pos: 1, Loras: "turbo:0.5"'
    )


ROUND_TRIP = [
    Recipe(
        "a girl, (red:1.2)\nsecond line",
        seed=2**64 - 1,
        model="m: x",
        extra=(("ADetailer model", "face, v8"),),
    ),
    Recipe(
        "", negative_prompt="", steps=8, cfg=1.0, sampler="euler", scheduler="karras", width=832, height=1216
    ),
    Recipe(
        'say "hi"', negative_prompt="line one\nline two", sampler="res_multistep", scheduler="beta", shift=2.5
    ),
    Recipe(
        "x", sampler="dpmpp_2m_sde", scheduler="sgm_uniform", denoise=0.35, loras=(("a", 1.0), ("b", -0.25))
    ),
    Recipe("x", sampler="uni_pc", scheduler="kl_optimal", batch_size=3),
]


@pytest.mark.parametrize("recipe", ROUND_TRIP)
def test_a1111_round_trip(recipe: Recipe) -> None:
    assert recipe_from_a1111(parse_a1111_parameters(a1111_parameters(recipe))) == recipe


def test_every_label_maps_back_to_a_name_with_that_label() -> None:
    for labels in (SAMPLER_LABELS, SCHEDULER_LABELS):
        for name, label in labels.items():
            key = "Sampler" if labels is SAMPLER_LABELS else "Schedule type"
            r = recipe_from_a1111({"prompt": "", key: label})
            back = r.sampler if key == "Sampler" else r.scheduler
            assert labels[back] == label, (name, label, back)
    assert recipe_from_a1111({"Sampler": "DPM++ 2M SDE"}).sampler == "dpmpp_2m_sde"  # not the _gpu twin


def test_parse_foreign_a1111_text() -> None:
    text = (
        "masterpiece, best quality, 1girl, <lora:foo:0.8>\r\n"
        "Negative prompt: worst quality, low quality\r\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 3141592653, "
        "Size: 832x1216, Model hash: 1a2b3c4d5e, Model: animagine-xl-4.0, VAE hash: 63aeecb90f, "
        'Clip skip: 2, Lora hashes: "foo: 0123456789ab", Version: v1.10.1\r\n'
    )
    params = parse_a1111_parameters(text)
    assert params["prompt"] == "masterpiece, best quality, 1girl, <lora:foo:0.8>"
    assert params["negative_prompt"] == "worst quality, low quality"
    assert params["Lora hashes"] == "foo: 0123456789ab"
    r = recipe_from_a1111(params)
    assert (r.steps, r.sampler, r.scheduler, r.cfg, r.seed, r.width, r.height) == (
        28,
        "dpmpp_2m",
        "karras",
        5.5,
        3141592653,
        832,
        1216,
    )
    assert (r.model, r.model_hash, r.shift, r.denoise) == ("animagine-xl-4.0", "1a2b3c4d5e", 3.0, 1.0)
    assert dict(r.extra) == {
        "VAE hash": "63aeecb90f",
        "Clip skip": "2",
        "Lora hashes": "foo: 0123456789ab",
        "Version": "v1.10.1",
    }


def test_parse_old_style_and_partial_text() -> None:
    old = parse_a1111_parameters(
        "cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768"
    )
    r = recipe_from_a1111(old)
    assert (r.sampler, r.scheduler, r.width, r.height) == ("dpmpp_2m", "karras", 512, 768)
    assert r.negative_prompt == ""  # no negative line means an empty negative prompt
    only_prompt = parse_a1111_parameters("just a prompt, with: colons")
    assert only_prompt == {"prompt": "just a prompt, with: colons", "negative_prompt": ""}
    unknown = recipe_from_a1111(parse_a1111_parameters("x\nSteps: 5, Sampler: Foo Bar, Seed: 2"))
    assert unknown.sampler == "foo_bar"  # validate() will then name the valid choices
    with pytest.raises(AnimaError, match="Steps"):
        recipe_from_a1111(parse_a1111_parameters("x\nSteps: many, Sampler: Euler, Seed: 2"))
    with pytest.raises(AnimaError, match="Size"):
        recipe_from_a1111(parse_a1111_parameters("x\nSteps: 5, Sampler: Euler, Size: big"))


# --------------------------------------------------------------------- PNG files
def _image(h: int = 32, w: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip(tmp_path: Path) -> None:
    r = ROUND_TRIP[0]
    img = _image()
    out = save_png(tmp_path / "sub" / "a.png", img, r, extra_json={"workflow": {"nodes": [1, 2]}})
    with Image.open(out) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), img)
        assert im.text["parameters"] == a1111_parameters(r)  # what A1111 PNG Info / civitai read
        assert im.text["workflow"] == '{"nodes": [1, 2]}'
    assert read_recipe(out) == r
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.png"]  # no temp file left


def test_read_recipe_falls_back_to_a1111_parameters(tmp_path: Path) -> None:
    r = Recipe("1girl", seed=5, sampler="euler", scheduler="karras")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", a1111_parameters(r))
    Image.fromarray(_image()).save(tmp_path / "a1111.png", pnginfo=info)
    assert read_recipe(tmp_path / "a1111.png") == r


def test_read_recipe_errors(tmp_path: Path) -> None:
    Image.fromarray(_image()).save(tmp_path / "plain.png")
    with pytest.raises(AnimaError, match="holds no generation settings"):
        read_recipe(tmp_path / "plain.png")
    with pytest.raises(AnimaError, match="no such image"):
        read_recipe(tmp_path / "nope.png")
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(AnimaError, match="cannot read image"):
        read_recipe(tmp_path / "fake.png")
    info = PngImagePlugin.PngInfo()
    info.add_text("anima_recipe", '{"prompt": "x", "stepz": 3}')
    Image.fromarray(_image()).save(tmp_path / "bad.png", pnginfo=info)
    with pytest.raises(AnimaError, match=r"bad\.png: unknown recipe field 'stepz'"):
        read_recipe(tmp_path / "bad.png")
    assert read_png_text(tmp_path / "bad.png") == {"anima_recipe": '{"prompt": "x", "stepz": 3}'}


def test_save_png_accepts_batch_of_one_and_rejects_bad_input(tmp_path: Path) -> None:
    save_png(tmp_path / "one.png", _image()[None], Recipe("x"))
    assert read_recipe(tmp_path / "one.png") == Recipe("x")
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "f.png", _image().astype(np.float32), Recipe("x"))
    with pytest.raises(ValueError, match="extra PNG text key"):
        save_png(tmp_path / "k.png", _image(), Recipe("x"), extra_json={"parameters": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.png"]


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.png"

    def fails_midway(fh) -> None:  # noqa: ANN001
        fh.write(b"\x89PNG half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails_midway)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        atomic_write(target, fails_midway)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    atomic_write(target, lambda fh: fh.write(b"new"))
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]
    with pytest.raises(AnimaError, match="is a folder"):
        atomic_write(tmp_path, lambda fh: fh.write(b"x"))


def test_output_paths() -> None:
    assert output_paths(Path("out/cat.png"), 1) == [Path("out/cat.png")]
    assert output_paths(Path("out/cat"), 1) == [Path("out/cat.png")]
    assert output_paths(Path("cat.PNG"), 3) == [Path("cat_0.png"), Path("cat_1.png"), Path("cat_2.png")]
    assert output_paths(Path("girl.v2"), 2) == [Path("girl.v2_0.png"), Path("girl.v2_1.png")]
    with pytest.raises(AnimaError, match="PNG"):
        output_paths(Path("cat.jpg"), 1)
    with pytest.raises(ValueError):
        output_paths(Path("cat"), 0)


def test_modules_import_light() -> None:
    code = (
        "import sys, anima.recipe, anima.imageio, anima.weights.discovery, anima.weights.download\n"
        "mods = ('torch', 'numpy', 'PIL', 'huggingface_hub', 'safetensors')\n"
        "heavy = [m for m in mods if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_a1111_hires_png_denoise_goes_to_the_hires_pass() -> None:
    text = (
        "1girl\nNegative prompt: bad\nSteps: 20, Sampler: Euler, CFG scale: 4, Seed: 5, Size: 512x512, "
        "Denoising strength: 0.45, Hires upscale: 1.5, Hires upscaler: Lanczos"
    )
    recipe = recipe_from_a1111(parse_a1111_parameters(text))
    assert recipe.denoise == 1.0
    assert recipe.hires.denoise == 0.45
