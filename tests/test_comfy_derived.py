"""Control pictures a ComfyUI graph computes (issue 14, done-when 2: the LLLite templates run).

The node rules (Canny, ImageInvert, Painter) as descriptions; the pixels `anima.jobs.
comfy_pictures` computes, against direct computations with kornia, PIL and numpy written here
from ComfyUI's nodes (comfy_extras/nodes_canny.py, nodes.py ImageInvert, comfy_extras/
nodes_painter.py); and the official any-control and inpainting templates run on the tiny model
with tiny LLLite patches under the templates' patch names.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_support import FIX, build_models_dir
from conftest import isolate_home
from PIL import Image

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import read_recipe
from anima.interop.comfyui import values as V
from anima.interop.comfyui.evaluate import Env, Evaluator
from anima.interop.comfyui.graph import parse_api
from anima.interop.comfyui.node_rules import RULES
from anima.jobs import comfy_pictures
from anima.recipe.image_ops import Resize
from anima.workflows import comfy_image, inpaint
from anima.workflows.init_image import load_rgb

TEMPLATES = files("comfyui_workflow_templates_json") / "templates"
PAINTER_FILE = "painter/painter-694-1784648658071.png"  # the inpainting template's Painter widget


def _run(graph: dict, node: str, sizes: dict | None = None) -> tuple:
    sizes = sizes or {"a.png": (40, 30)}
    return Evaluator(parse_api(graph), Env(lambda name: sizes[name]), RULES).run(node)


def _load(**more) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}, **more}


# ---------------------------------------------------------------------- node rules
def test_canny_and_invert_are_steps_with_the_widgets_values() -> None:
    g = _load(
        c={"class_type": "Canny", "inputs": {"image": ["1", 0], "low_threshold": 0.2, "high_threshold": 0.6}},
        i={"class_type": "ImageInvert", "inputs": {"image": ["c", 0]}},
    )
    (p,) = _run(g, "i")
    assert (p.name, p.size, p.derived) == ("a.png", (40, 30), True)
    assert p.ops == (V.Canny(0.2, 0.6, "node c (Canny)"), V.Invert("node i (ImageInvert)"))
    assert [op.text() for op in p.ops] == ["canny 0.2,0.6", "invert"]


@pytest.mark.parametrize(
    "low, high, message",
    [(0.5, 0.3, "low_threshold 0.5 is above high_threshold 0.3"), (0.0, 0.3, "low_threshold 0 is outside")],
)
def test_canny_thresholds_are_checked(low: float, high: float, message: str) -> None:
    g = _load(
        c={"class_type": "Canny", "inputs": {"image": ["1", 0], "low_threshold": low, "high_threshold": high}}
    )
    with pytest.raises(AnimaError, match=f"^node c \\(Canny\\): {message}"):
        _run(g, "c")


def _painter(**inputs) -> dict:
    base = {"mask": f"{PAINTER_FILE} [temp]", "width": 512, "height": 256, "bg_color": "#000000"}
    return {"class_type": "Painter", "inputs": base | inputs}


def test_painter_over_a_picture() -> None:
    image, mask = _run(_load(p=_painter(image=["1", 0])), "p")
    assert image.ops == (V.Paint(f"{PAINTER_FILE} [temp]", "node p (Painter)"),) and image.size == (40, 30)
    assert isinstance(mask, V.PainterMask) and mask.base == V.Picture("a.png", "node 1 (LoadImage)", (40, 30))
    assert mask.file == f"{PAINTER_FILE} [temp]"


def test_painter_without_a_drawing_passes_the_picture_and_an_empty_mask() -> None:
    image, mask = _run(_load(p=_painter(image=["1", 0], mask="  ")), "p")
    assert image == V.Picture("a.png", "node 1 (LoadImage)", (40, 30)) and not image.derived
    assert mask.file == ""
    assert comfy_pictures.painter_mask(mask).shape == (1, 30, 40)
    assert not comfy_pictures.painter_mask(mask).any()


def test_painter_without_a_base_image_paints_on_its_canvas() -> None:
    image, mask = _run({"p": _painter(mask="", bg_color="#ff8000", width=64, height=32)}, "p")
    assert image.fill == V.Fill(64, 32, (1.0, 128 / 255, 0.0)) and image.size == (64, 32) and image.derived
    pixels = comfy_pictures.picture(image)
    assert pixels.shape == (1, 32, 64, 3) and pixels[0, 5, 7].tolist() == [1.0, np.float32(128 / 255), 0.0]
    (black, _) = _run({"p": _painter(mask="", bg_color="#fff")}, "p")  # not 6 digits: black (hex_to_rgb)
    assert black.fill == V.Fill(512, 256, (0.0, 0.0, 0.0))
    with pytest.raises(AnimaError, match=r"^node p \(Painter\): bg_color '#gg0000' is not"):
        _run({"p": _painter(bg_color="#gg0000")}, "p")


def test_a_filter_anima_does_not_know_is_one_line() -> None:
    g = _load(b={"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}})
    with pytest.raises(AnimaError, match=r"^node b \(ImageBlur\) is not a node anima supports$"):
        _run(g, "b")


def test_vae_encode_refuses_a_derived_picture() -> None:
    g = _load(
        i={"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        v={"class_type": "VAELoader", "inputs": {"vae_name": "v.safetensors"}},
        e={"class_type": "VAEEncode", "inputs": {"pixels": ["i", 0], "vae": ["v", 0]}},
    )
    with pytest.raises(AnimaError, match=r"^node e \(VAEEncode\): its image passed through node i"):
        _run(g, "e")


# ---------------------------------------------------------------------- pixels
def _bytes01(path: Path) -> torch.Tensor:
    arr = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / np.float32(255.0)
    return torch.from_numpy(arr)[None]


def _lanczos8(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's lanczos: floor(clip(255 x)) bytes through PIL's LANCZOS, bytes / 255."""
    arr = np.clip(np.float32(255.0) * x[0].numpy(), 0, 255).astype(np.uint8)
    out = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.LANCZOS))
    return torch.from_numpy(out.astype(np.float32) / np.float32(255.0))[None]


def _canny_invert(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    from kornia.filters import canny

    _, edges = canny(x.movedim(-1, 1), low, high)  # the RGB picture, as the Canny node passes it
    return 1.0 - edges.repeat(1, 3, 1, 1).movedim(1, -1)


def _png_roundtrip(data: bytes, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_canny_invert_resize_as_comfyui_computes_it(tmp_path: Path) -> None:
    pytest.importorskip("kornia")
    src = FIX / "input" / "wf_control_128.png"
    ops = (V.Canny(0.17, 0.45, "c"), V.Invert("i"), Resize("lanczos", 100, 90))
    made = comfy_pictures.picture(V.Picture(str(src), "l", (100, 90), ops))
    inverted = _canny_invert(_bytes01(src), 0.17, 0.45)
    assert set(inverted.unique().tolist()) <= {0.0, 1.0}  # hysteresis leaves no weak edges
    assert 0 < float(inverted.mean()) < 1  # the fixture has edges
    want = _lanczos8(inverted, 100, 90)
    assert torch.equal(made, want)
    # stored as an 8-bit PNG and read back as a control unit reads it: the same values
    path = _png_roundtrip(
        comfy_pictures.derived_png(V.Picture(str(src), "l", (100, 90), ops)), tmp_path, "c.png"
    )
    assert torch.equal(load_rgb(path), want)


def _painter_png(path: Path, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[: height // 2, :, 3] = 0  # untouched
    rgba[height // 2 :, : width // 2, 3] = 255  # painted
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba).save(path)
    return rgba


def test_painter_composite_and_mask_as_comfyui_computes_them(tmp_path: Path) -> None:
    base_path = FIX / "input" / "wf_init_140x108.png"
    painter = tmp_path / PAINTER_FILE
    _painter_png(painter, 50, 40)  # another size than the base: LANCZOS-resized to it
    base = V.Picture(str(base_path), "l", (140, 108))
    image = comfy_pictures.picture(
        V.Picture(str(base_path), "l", (140, 108), (V.Paint(str(painter), "p"),))
    )
    mask = comfy_pictures.painter_mask(V.PainterMask(base, str(painter), "p"))
    with Image.open(painter) as im:  # the node's maths, in numpy
        p = (
            np.asarray(im.convert("RGBA").resize((140, 108), Image.Resampling.LANCZOS)).astype(np.float32)
            / 255
        )
    b = _bytes01(base_path)[0].numpy()
    want = p[:, :, :3] * p[:, :, 3:4] + b * (1.0 - p[:, :, 3:4])
    assert np.array_equal(image[0].numpy(), want) and np.array_equal(mask[0].numpy(), p[:, :, 3])
    # 8-bit files: within half a level of ComfyUI's floats (exact where alpha is 0 or 1), the mask exact
    got = load_rgb(_png_roundtrip(comfy_pictures.image_png(image), tmp_path, "i.png"))[0].numpy()
    assert np.abs(got - want).max() <= 0.5 / 255 + 1e-6
    solid = (p[:, :, 3] == 0) | (p[:, :, 3] == 1)
    assert np.abs(got - want)[solid].max() <= 1e-6
    mask_file = _png_roundtrip(comfy_pictures.mask_png(mask), tmp_path, "m.png")
    for channel in ("red", "green", "blue"):  # every channel a recipe may read
        assert torch.equal(comfy_image.load_mask(mask_file, channel), mask), channel
    # LoadImage's 1 - alpha / 255 of alpha = 255 - v: v / 255 up to float rounding
    assert torch.allclose(comfy_image.load_mask(mask_file, "alpha"), mask, rtol=0, atol=1e-6)
    assert torch.equal(inpaint.load_mask(mask_file), mask)


def test_canny_without_kornia_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kornia", None)
    monkeypatch.setitem(sys.modules, "kornia.filters", None)
    p = V.Picture("x.png", "l", (8, 8), (V.Canny(0.1, 0.2, "c"),))
    with pytest.raises(
        AnimaError, match=r"^the graph's Canny node needs kornia: pip install 'anima\[control\]'$"
    ):
        comfy_pictures.check_available(p)


# ---------------------------------------------------------------------- the templates
@pytest.fixture
def template_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Models under the templates' file names (the tiny model, tiny LLLite patches, the kohya tiny
    LoRA as the turbo LoRA) and an input folder with the templates' pictures."""
    isolate_home(tmp_path, monkeypatch)
    models = build_models_dir(tmp_path)
    links = {
        "diffusion_models/anima-base-v1.0": "diffusion_models/anima_tiny_dit",
        "text_encoders/qwen_3_06b_base": "text_encoders/qwen3_tiny_te",
        "vae/qwen_image_vae": "vae/wan21_tiny_vae",
        "model_patches/anima-lllite-any-test-like-v2": "model_patches/anima_lllite_tiny_plain",
        "model_patches/anima-lllite-inpainting-v2": "model_patches/anima_lllite_tiny_inpaint",
        "loras/anima-turbo-lora-v0.2": "loras/anima_tiny_lora_kohya",
    }
    for name, target in links.items():
        (models / f"{name}.safetensors").symlink_to(models / f"{target}.safetensors")
    inputs = tmp_path / "input"
    inputs.mkdir()
    Image.open(FIX / "input" / "wf_control_128.png").convert("RGB").resize((96, 144)).save(
        inputs / "wired_serenity_cyber_figure.png"
    )
    Image.open(FIX / "input" / "wf_init_140x108.png").convert("RGB").save(
        inputs / "goat_horned_spirit_girl.png"
    )
    _painter_png(inputs / PAINTER_FILE, 70, 54)
    for name in ("image_anima_lllite_any_control_to_image", "image_anima_lllite_image_inpainting"):
        (tmp_path / f"{name}.json").write_text((TEMPLATES / f"{name}.json").read_text())
    return tmp_path


def _generate(root: Path, *args: str) -> int:
    return main(
        ["generate", *args, "--models-dir", str(root / "models"), "--input-dir", str(root / "input"),
         "--device", "cpu", "--dtype", "fp32", "--no-progress", "--width", "64", "--height", "64",
         "--steps", "2"]
    )  # fmt: skip


def test_any_control_template_runs(template_dir: Path) -> None:
    pytest.importorskip("kornia")
    out = template_dir / "any.png"
    template = template_dir / "image_anima_lllite_any_control_to_image.json"
    assert _generate(template_dir, "--workflow", str(template), "-o", str(out)) == 0
    r = read_recipe(out)
    assert (r.width, r.height, r.steps, r.sampler, r.scheduler, r.cfg, r.loras) == (
        64, 64, 2, "euler", "simple", 4.0, ()
    )  # fmt: skip
    (unit,) = r.controls
    assert Path(unit.model).name == "anima-lllite-any-test-like-v2.safetensors"
    assert (unit.strength, unit.start, unit.end, unit.mask) == (1.0, 0.0, 1.0, "")
    control = template_dir / "any.control0.png"
    assert unit.image == str(control.resolve()) and unit.image_hash
    # ResizeImageMaskNode "scale total pixels" 1 MP of 96x144: scale = sqrt(2**20 / (96 * 144))
    scale = (1024 * 1024 / (96 * 144)) ** 0.5
    size = (round(96 * scale), round(144 * scale))
    src = _bytes01(template_dir / "input" / "wired_serenity_cyber_figure.png")
    want = _lanczos8(_canny_invert(src, 0.17, 0.45), *size)
    assert torch.equal(load_rgb(control), want)


def test_a_failed_run_leaves_no_derived_pictures(template_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kornia")
    from anima.jobs import comfy_graph

    def fail(*_args, **_kwargs):
        raise AnimaError("the DiT went away")

    monkeypatch.setattr(comfy_graph, "render_graph", fail)
    template = template_dir / "image_anima_lllite_any_control_to_image.json"
    assert _generate(template_dir, "--workflow", str(template), "-o", str(template_dir / "f.png")) == 2
    assert not list(template_dir.glob("f*.png"))  # neither the image nor its control picture


@pytest.mark.slow
def test_inpainting_template_runs_and_reruns_from_its_png(template_dir: Path) -> None:
    out = template_dir / "inpaint.png"
    template = template_dir / "image_anima_lllite_image_inpainting.json"
    assert _generate(template_dir, "--workflow", str(template), "-o", str(out)) == 0
    r = read_recipe(out)
    assert (r.steps, r.cfg, r.loras) == (2, 1.0, (("anima-turbo-lora-v0.2.safetensors", 1.0),))  # turbo on
    (unit,) = r.controls
    image, mask = template_dir / "inpaint.control0.png", template_dir / "inpaint.control0-mask.png"
    assert (unit.image, unit.mask) == (str(image.resolve()), str(mask.resolve()))
    with Image.open(template_dir / "input" / PAINTER_FILE) as im:
        p = (
            np.asarray(im.convert("RGBA").resize((140, 108), Image.Resampling.LANCZOS)).astype(np.float32)
            / 255
        )
    b = _bytes01(template_dir / "input" / "goat_horned_spirit_girl.png")[0].numpy()
    want = p[:, :, :3] * p[:, :, 3:4] + b * (1.0 - p[:, :, 3:4])
    assert np.abs(load_rgb(image)[0].numpy() - want).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(inpaint.load_mask(mask)[0].numpy(), p[:, :, 3])
    again = template_dir / "again.png"
    assert _generate(template_dir, "--from-png", str(out), "-o", str(again)) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


def test_a_missing_painter_file_is_one_line(template_dir: Path, capsys: pytest.CaptureFixture) -> None:
    (template_dir / "input" / PAINTER_FILE).unlink()
    out = template_dir / "inpaint.png"
    template = template_dir / "image_anima_lllite_image_inpainting.json"
    assert _generate(template_dir, "--workflow", str(template), "-o", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("anima: error: node 694 (Painter): input image 'painter/painter-694-")
        and "\n" not in err
    )
    assert "--input-dir" in err
    assert not list(template_dir.glob("inpaint*"))  # nothing written


def _canvas_graph() -> dict:
    """A whole graph whose control image is a Painter canvas (no file: nothing drawn)."""
    return {
        "u": {"class_type": "UNETLoader", "inputs": {"unet_name": "d.st", "weight_dtype": "default"}},
        "c": {"class_type": "CLIPLoader", "inputs": {"clip_name": "t.st", "type": "stable_diffusion"}},
        "v": {"class_type": "VAELoader", "inputs": {"vae_name": "v.safetensors"}},
        "m": {"class_type": "ModelPatchLoader", "inputs": {"name": "p.safetensors"}},
        "p": _painter(mask="", bg_color="#ffffff", width=64, height=64),
        "a": {"class_type": "AnimaLLLiteApply", "inputs": {
            "model": ["u", 0], "model_patch": ["m", 0], "image": ["p", 0], "mask": ["p", 1],
            "strength": 0.7, "start_percent": 0.1, "end_percent": 0.9}},
        "t": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": "a cat"}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": ""}},
        "e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "k": {"class_type": "KSampler", "inputs": {
            "model": ["a", 0], "positive": ["t", 0], "negative": ["n", 0], "latent_image": ["e", 0],
            "seed": 1, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple",
            "denoise": 1.0}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["v", 0]}},
        "s": {"class_type": "SaveImage", "inputs": {"images": ["d", 0], "filename_prefix": "x"}},
    }  # fmt: skip


def test_a_painter_canvas_is_a_derived_image_and_mask() -> None:
    from anima.interop.comfyui.plan import DERIVED, plan_graph

    (job,) = plan_graph(parse_api(_canvas_graph()), lambda n: (0, 0), lambda n: f"/input/{n}").jobs
    (unit,) = job.recipe.controls
    assert (unit.image, unit.mask, unit.strength, unit.start, unit.end) == (DERIVED, DERIVED, 0.7, 0.1, 0.9)
    image, mask = job.derived
    assert image.value.fill == V.Fill(64, 64, (1.0, 1.0, 1.0)) and mask.value.file == ""
    assert not job.recipe.comfy.mask_channel  # the written mask reads the same through every channel


def test_the_server_refuses_a_graph_that_computes_a_control_picture() -> None:
    from anima.server.graphs import graph_recipe

    with pytest.raises(AnimaError, match=r"^the graph computes a control picture \(Painter, Canny, \.\.\.\)"):
        graph_recipe(_canvas_graph(), service=None)
