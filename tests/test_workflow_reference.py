"""Reference editing: the reference frame after the generated one (T = 2), its RoPE positions and zero
padding mask, the slice back to T = 1, the Edit LoRA warning, the CLI record and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_MODEL_ARGS, tiny_pipeline
from PIL import Image

from anima.cli import main
from anima.imageio import read_recipe
from anima.model.rope import rope3d_angles, rope3d_axis_dims
from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.workflows.reference import ReferenceFrame, fit_image

W = TINY / "weights"
FLAGS = [*TINY_MODEL_ARGS, "--dtype", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


def _ref_image(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(path)
    return path


def test_frame_order_and_slicing() -> None:
    x = torch.randn(2, 16, 1, 4, 6)
    ref = ReferenceFrame(torch.randn(1, 16, 1, 4, 6), strength=0.5)
    both = ref.extend(x)
    assert both.shape == (2, 16, 2, 4, 6)
    assert torch.equal(both[:, :, :1], x)  # the generated frame first (t = 0)
    assert torch.equal(both[:, :, 1:], (ref.latent * 0.5).expand(2, -1, -1, -1, -1))  # reference at t = 1
    assert torch.equal(ReferenceFrame.frames(both, 1), x)


def test_reference_positions_are_the_next_temporal_index() -> None:
    """RoPE of the (2, H', W') grid: the reference tokens keep the frame's spatial angles and get
    temporal index 1 (the generated frame's temporal angles are 0)."""
    head_dim = 32
    dt = rope3d_axis_dims(head_dim)[0] // 2
    ang = rope3d_angles((2, 3, 4), head_dim).view(2, 12, -1)
    assert torch.equal(ang[0, :, dt:], ang[1, :, dt:])
    assert torch.equal(ang[0, :, :dt], torch.zeros_like(ang[0, :, :dt]))
    assert torch.allclose(ang[1, :, :dt], ang[1, :1, :dt].expand(12, -1)) and (ang[1, :, :dt] > 0).any()


def test_fit_image_crops_to_the_aspect_then_resizes() -> None:
    img = torch.rand(1, 80, 64, 3)
    assert fit_image(img, 64, 64).shape == (1, 64, 64, 3)
    assert fit_image(img, 32, 48).shape == (1, 48, 32, 3)
    assert torch.equal(fit_image(img[:, 8:72], 64, 64), img[:, 8:72])  # already the size: untouched


def test_reference_run_on_the_tiny_model(pipe, tmp_path) -> None:
    """Done-when 3: T = 2 inside the DiT (zero padding-mask channel on both frames, the grid's RoPE),
    T = 1 out; the prediction uses the first frame of the DiT's output."""
    seen = {}

    def pre(module, args):
        seen.setdefault("x", args[0].clone())
        seen.setdefault("sigma", args[1].clone())

    def post(module, args, out):
        seen.setdefault("v", out.clone())

    embed_in = []
    hooks = [
        pipe.dit.register_forward_pre_hook(pre),
        pipe.dit.register_forward_hook(post),
        pipe.dit.x_embedder.register_forward_pre_hook(lambda m, a: embed_in.append(a[0].clone())),
    ]
    grids = []
    rope = pipe.dit.rope
    pipe.dit.rope = lambda grid, device: grids.append(grid) or rope(grid, device)
    previews = []
    try:
        recipe = Recipe("edit", width=64, height=64, steps=2, sampler="euler", seed=1, cfg=1.0)
        recipe = recipe.with_(reference_image=str(_ref_image(tmp_path / "ref.png")))
        result = pipe.generate(recipe, preview=lambda i, n, x0: previews.append(x0))
    finally:
        for h in hooks:
            h.remove()
        pipe.dit.rope = rope
    assert result.images.shape == (1, 64, 64, 3) and result.latents.shape == (1, 16, 1, 8, 8)
    assert seen["x"].shape == (1, 16, 2, 8, 8) and seen["v"].shape == (1, 16, 2, 8, 8)
    assert grids[0] == (2, 4, 4)
    mask_channel = embed_in[0][:, 16]  # the padding mask, on both frames
    assert embed_in[0].shape[1] == 17 and torch.equal(mask_channel, torch.zeros_like(mask_channel))
    expected_ref = pipe.encode_image(fit_image(_load(tmp_path / "ref.png"), 64, 64))
    from anima.model.latent import normalize_latent

    assert torch.equal(seen["x"][:, :, 1:], normalize_latent(expected_ref).float())  # clean, every step
    # step 1's x0 = x - sigma * v, from the generated frame's velocity only (cfg 1: the model's own)
    x0 = seen["x"][:, :, :1] - seen["v"][:, :, :1] * seen["sigma"].view(-1, 1, 1, 1, 1)
    assert torch.allclose(previews[0], x0, atol=1e-6)
    assert any("needs an Edit LoRA" in n for n in result.notes)  # a warning, not silence


def _load(path):
    from anima.workflows.init_image import load_rgb

    return load_rgb(path)


def test_cli_reference_recorded_rerun_and_errors(tmp_path, capsys) -> None:
    ref = _ref_image(tmp_path / "ref.png")
    out = tmp_path / "e.png"
    flags = ["edit", "--size", "64x64", "--steps", "2", "--sampler", "euler", "--seed", "2"]
    assert main(["generate", *flags, "--reference", str(ref), "--reference-strength", "0.8", *FLAGS,
                 "-o", str(out)]) == 0  # fmt: skip
    assert "needs an Edit LoRA" in capsys.readouterr().err
    recipe = read_recipe(out)
    assert recipe.reference.image == str(ref.resolve()) and recipe.reference.strength == 0.8
    assert len(recipe.reference.image_hash) == 16
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    capsys.readouterr()
    _ref_image(ref, seed=9)  # the recorded file changed since
    bad = tmp_path / "bad.png"
    assert main(["generate", "--from-png", str(out), *FLAGS, "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has changed since" in err[0] and not bad.exists()
    assert main(["generate", *flags, "--reference", str(tmp_path / "none.png"), *FLAGS, "-o", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.png not found" in err[0] and "--reference" in err[0]
