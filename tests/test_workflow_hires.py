"""Hires fix: pass planning (<= 1.75x per pass, 2048 px cap), upscalers, final sizes, CLI + reproduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, TOKENIZERS, tiny_pipeline
from PIL import Image

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import read_recipe
from anima.interop.a1111 import setting_pairs
from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.workflows.hires import bislerp, plan_passes, upscale_latent

W = TINY / "weights"
MODEL_FLAGS = [
    "--dit", str(W / "anima_tiny_dit.safetensors"),
    "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
    "--vae", str(W / "wan21_tiny_vae.safetensors"),
    "--tokenizer-dir", str(TOKENIZERS), "--dtype", "fp32", "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize(
    ("size", "scale", "sizes"),
    [
        ((512, 512), 3.0, [(880, 880), (1536, 1536)]),  # 3x asked in one go: two passes of 1.73x
        ((512, 512), 1.5, [(768, 768)]),
        ((512, 512), 2.0, [(720, 720), (1024, 1024)]),
        ((832, 1216), 1.5, [(1248, 1824)]),  # tall
        ((1216, 832), 1.6, [(1952, 1328)]),  # wide
        ((512, 512), 1.0, []),
    ],
)
def test_plans(size, scale, sizes) -> None:
    plan = plan_passes(*size, scale)
    assert list(plan.sizes) == sizes
    for (w0, h0), (w1, h1) in zip([size, *sizes], sizes, strict=False):
        assert w1 / w0 <= 1.75 and h1 / h0 <= 1.75 and w1 % 16 == 0 and h1 % 16 == 0


def test_plan_says_how_many_passes_and_refuses_above_the_cap() -> None:
    assert (
        plan_passes(512, 512, 3.0).describe()
        == "hires fix: 3x in 2 passes of 1.73x: 512x512 -> 880x880 -> 1536x1536"
    )
    with pytest.raises(AnimaError, match=r"3072x3072 has a side over 2048 px.*--hires-scale 2 or less"):
        plan_passes(1024, 1024, 3.0)
    with pytest.raises(AnimaError, match="1216x2880"):  # tall: the long side decides
        plan_passes(512, 1216, 2.37)
    assert plan_passes(1024, 1024, 3.0, max_side=3072).final == (3072, 3072)


def test_latent_upscalers() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 1, 6, 10, generator=g)
    for method in ("latent-bislerp", "latent-nearest-exact", "latent-bilinear"):
        out = upscale_latent(z, 9, 15, method)
        assert out.shape == (2, 16, 1, 9, 15) and torch.isfinite(out).all()
    const = torch.ones(1, 16, 4, 4)
    assert torch.allclose(bislerp(const, 8, 8), torch.ones(1, 16, 8, 8))
    # bislerp keeps channel-vector lengths between those of the neighbours (a lerp shrinks them).
    flat = z[:, :, 0]
    up_s, up_l = bislerp(flat, 12, 20), torch.nn.functional.interpolate(flat, (12, 20), mode="bilinear")
    assert up_s.norm(dim=1).mean() > up_l.norm(dim=1).mean()
    assert up_s.norm(dim=1).max() <= flat.norm(dim=1).max() + 1e-4
    with pytest.raises(AnimaError):
        upscale_latent(z, 9, 15, "esrgan")
    # On a GPU the latent lives there: nothing of the CPU may mix in (bislerp's indices did). The meta
    # device refuses the same mixes as a GPU would.
    for method in ("latent-bislerp", "latent-nearest-exact", "latent-bilinear"):
        assert upscale_latent(z.to("meta"), 9, 15, method).device.type == "meta"


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


@pytest.mark.parametrize(
    ("size", "scale", "upscaler", "final"),
    [((64, 96), 1.5, "latent-bislerp", (96, 144)), ((96, 64), 2.0, "lanczos", (192, 128))],
)
def test_final_size(pipe, size, scale, upscaler, final) -> None:
    base = Recipe("1girl", width=size[0], height=size[1], steps=3, sampler="euler", seed=2)
    hires = base.with_(hires_scale=scale, hires_upscaler=upscaler, hires_steps=2, hires_denoise=0.6)
    steps = []
    res = pipe.generate(hires, progress=lambda i, n: steps.append((i, n)))
    assert res.images.shape == (1, final[1], final[0], 3) and torch.isfinite(res.images).all()
    passes = len(plan_passes(*size, scale).sizes)
    total = 3 + 2 * passes
    assert steps == [(i, total) for i in range(1, total + 1)]  # progress over all passes
    assert res.notes and f"in {passes} pass" in res.notes[0]


def test_cli_hires_plans_two_passes_for_3x_and_reproduces(tmp_path, capsys) -> None:
    out = tmp_path / "h.png"
    flags = ["1girl", "--size", "64x64", "--steps", "2", "--sampler", "euler", "--seed", "9"]
    hires = ["--hires-scale", "3", "--hires-steps", "2", "--hires-denoise", "0.5"]
    assert main(["generate", *flags, *hires, *MODEL_FLAGS, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "hires fix: 3x in 2 passes of 1.73x: 64x64 -> 112x112 -> 192x192" in err
    assert Image.open(out).size == (192, 192)
    recipe = read_recipe(out)
    assert (recipe.width, recipe.height) == (64, 64)  # the recipe keeps the first pass's size
    assert dict(setting_pairs(recipe))["Hires upscale"] == "3"
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--hires-scale", "40"], "hires scale"),
        (["--hires-scale", "2", "--hires-denoise", "0"], "hires denoise"),
        (["--size", "1024x1024", "--hires-scale", "3"], "over 2048 px"),
        (["--hires-scale", "2", "--hires-sampler", "eulr"], "hires sampler"),
    ],
)
def test_bad_hires_flags(tmp_path, capsys, flags, needle) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "p", *flags, *MODEL_FLAGS, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()
