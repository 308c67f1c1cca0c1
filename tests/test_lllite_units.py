"""The pieces around the LLLite maths: the recipe's control units (checks, JSON, A1111 infotext), the
mechanism's promises (no cost at strength 0 or outside the window, fused q/k/v, order of chained
patches, removal), ComfyUI's lenient semantics for the graph path, and the preprocessors."""

from __future__ import annotations

import pytest
import torch
from conftest import SHARED, TINY

from anima.errors import AnimaError
from anima.interop.a1111 import infotext, parse_infotext, recipe_from_infotext
from anima.model.dit import fuse_qkv
from anima.recipe import ControlUnit, Recipe
from anima.weights.lllite import load_lllite
from anima.weights.loading import load_dit
from anima.workflows.control import ControlledProjection, ControlPatch, ControlRun
from anima.workflows.control_preprocess import preprocess
from anima.workflows.control_sources import ControlImage, check_control_image
from anima.workflows.init_image import load_rgb

LLLITE = SHARED / "fixtures" / "anima-lllite"
ASPP = LLLITE / "lllite" / "anima_lllite_tiny_aspp.safetensors"
PLAIN = LLLITE / "lllite" / "anima_lllite_tiny_plain.safetensors"


@pytest.fixture(scope="module")
def dit():
    return load_dit(TINY / "weights" / "anima_tiny_dit.safetensors")[0]


@pytest.fixture(scope="module")
def image():
    return load_rgb(LLLITE / "inputs" / "control_128.png")


def _forward(dit, patches, x, sigma, ctx):
    run = ControlRun(patches)
    with torch.no_grad(), run.installed(dit), run.calling(x, sigma):
        return dit(x, sigma, ctx)


def _inputs():
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 16, 1, 16, 16, generator=g), torch.randn(2, 512, 128, generator=g)
    return x, torch.full((2,), 0.6), ctx


def test_unit_checks_and_json_round_trip() -> None:
    u = ControlUnit("any-test", image="/a/b.png", image_hash="ab", strength=2, start=0.1, end=0.9)
    assert isinstance(u.strength, float)
    r = Recipe("x", controls=[u, ControlUnit("depth", image="/c.png")])
    assert Recipe.from_json(r.to_json()) == r
    assert r.to_dict()["controls"][1] == {"model": "depth", "image": "/c.png"}
    for bad, setting in (({"strength": -10.5}, "control_strength"),
                         ({"start": 0.5, "end": 0.4}, "control_start"),
                         ({"end": 1.5}, "control_end"), ({"mask": "/m.png"}, "control_image")):  # fmt: skip
        with pytest.raises(AnimaError) as e:
            ControlUnit("m", **bad)
        assert e.value.setting == setting
    with pytest.raises(AnimaError, match="unknown control setting 'weight'"):
        Recipe.from_dict({"prompt": "x", "controls": [{"model": "m", "weight": 1}]})


def test_infotext_round_trip_and_extension_units() -> None:
    u = ControlUnit("/models/model_patches/anima-lllite-depth-1.safetensors", model_hash="0123456789",
                    image="/in/depth, 1.png", image_hash="ff00", strength=0.55, end=0.75)  # fmt: skip
    text = infotext(Recipe("x", controls=(u,)))
    back = recipe_from_infotext(parse_infotext(text)).controls[0]
    assert (back.model, back.model_hash, back.image, back.strength, back.end) == (
        "anima-lllite-depth-1", "0123456789", "/in/depth, 1.png", 0.55, 0.75)  # fmt: skip
    # As sd-webui-controlnet writes a unit (fields anima has no use for are ignored).
    a1111 = ('1girl\nSteps: 20, Sampler: Euler, Seed: 1, Size: 512x512, ControlNet 0: "Module: canny, '
             "Model: control_canny [d14c016b], Weight: 0.9, Resize Mode: Crop and Resize, Low Vram: False, "
             'Processor Res: 512, Guidance Start: 0.1, Guidance End: 0.8, Pixel Perfect: True, '
             'Control Mode: Balanced"')  # fmt: skip
    unit = recipe_from_infotext(parse_infotext(a1111)).controls[0]
    assert (unit.model, unit.model_hash, unit.strength, unit.start, unit.end) == (
        "control_canny", "d14c016b", 0.9, 0.1, 0.8)  # fmt: skip


def test_strength_zero_and_outside_window_cost_nothing(dit, image) -> None:
    x, sigma, ctx = _inputs()
    lllite = load_lllite(ASPP, dit=dit.cfg)
    with torch.no_grad():
        plain = dit(x, sigma, ctx)
    zero = ControlPatch(lllite, image, None, 0.0, 1.0, 0.0)
    outside = ControlPatch(lllite, image, None, 1.0, 0.5, 0.2)  # sigma 0.6 is above the window
    run = ControlRun([zero])
    assert not run and not run.targets()  # nothing installed at strength 0
    assert torch.equal(_forward(dit, [zero], x, sigma, ctx), plain)
    assert torch.equal(_forward(dit, [outside], x, sigma, ctx), plain) and not outside._embeddings
    s = float(sigma[0])  # the call's float32 sigma: a window of exactly it is inside (both ends inclusive)
    inside = ControlPatch(lllite, image, None, 1.0, s, s)
    assert not torch.equal(_forward(dit, [inside], x, sigma, ctx), plain)
    assert all(type(b.self_attn.q_proj) is torch.nn.Linear for b in dit.blocks)  # removed afterwards


def test_fused_qkv_steps_aside(dit, image) -> None:
    """On GPUs the pipeline fuses q/k/v into one matmul; a patch gives q, k and v different inputs, so
    while it is installed the three projections run apart (same numbers as the unfused DiT)."""
    import copy

    x, sigma, ctx = _inputs()
    lllite = load_lllite(ASPP, dit=dit.cfg)
    fused = copy.deepcopy(dit)
    assert all(fuse_qkv(b.self_attn) for b in fused.blocks)
    patch = [ControlPatch(lllite, image, None, 1.0, 1.0, 0.0)]
    a, b = _forward(dit, patch, x, sigma, ctx), _forward(fused, patch, x, sigma, ctx)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert all(b.self_attn._fused_qkv_weight() is not None for b in fused.blocks)  # fused again after


def test_chained_patches_apply_in_order(dit, image) -> None:
    """Like chained AnimaLLLiteApply nodes: the second patch sees the input the first one made."""
    x, sigma, ctx = _inputs()
    a = ControlPatch(load_lllite(ASPP, dit=dit.cfg), image, None, 0.7, 1.0, 0.0)
    b = ControlPatch(load_lllite(PLAIN, dit=dit.cfg), image, None, 0.5, 1.0, 0.0)
    run = ControlRun([a, b])
    inp = torch.randn(2, 64, 256)
    with run.installed(dit), run.calling(x, sigma):
        layer = dit.blocks[0].self_attn.q_proj
        assert isinstance(layer, ControlledProjection)
        got = run.apply(inp, 0, "self_attn_q_proj")
        first = a.lllite.module(0, "self_attn_q_proj")(inp, a.embedding((16, 16), torch.float32), 0.7)
        want = b.lllite.module(0, "self_attn_q_proj")(first, b.embedding((16, 16), torch.float32), 0.5)
    assert torch.allclose(got, want)
    assert not torch.equal(_forward(dit, [a, b], x, sigma, ctx), _forward(dit, [b, a], x, sigma, ctx))


def test_graph_semantics_ignore_what_comfyui_ignores(image) -> None:
    mask = torch.zeros(1, 64, 64)
    ci = ControlImage(image, mask)
    notes = check_control_image(ci, 3, 0, strict=False)
    assert notes == ["control 0: this patch takes no mask (3 channels); the mask is ignored"]
    assert "cropped and resized on its own" in check_control_image(ci, 4, 0, strict=False)[0]
    with pytest.raises(AnimaError, match="drop the mask"):
        check_control_image(ci, 3, 0, strict=True)


def test_preprocessors(image) -> None:
    assert torch.equal(preprocess(image, "invert"), 1 - image)
    gray = preprocess(image, "grayscale")
    assert torch.equal(gray[..., 0], gray[..., 2])
    edges = preprocess(1 - image, "canny")  # the drawing's strokes, white on black
    lines = preprocess(1 - image, "lineart")
    assert set(edges.unique().tolist()) <= {0.0, 1.0} and torch.equal(lines, 1 - edges)
    assert 0.005 < edges.mean() < 0.3
    assert preprocess(image, "scribble").mean() < lines.mean()  # thicker strokes
    with pytest.raises(AnimaError, match="unknown control preprocessor"):
        preprocess(image, "hed")
