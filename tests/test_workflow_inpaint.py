"""Inpainting: latent-noise-mask semantics, byte-identical unmasked pixels, blur/grow, only-masked, NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, TOKENIZERS, tiny_pipeline
from PIL import Image

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import load_image, to_uint8
from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.workflows import inpaint

INIT = TINY / "e2e" / "i2i_euler_simple_d06" / "init_image.png"
W = TINY / "weights"


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


def _mask(h: int = 128, w: int = 128, box=(40, 30, 90, 80)) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    x0, y0, x1, y1 = box
    m[:, y0:y1, x0:x1] = 1.0
    return m


def _recipe(**wf) -> Recipe:
    r = Recipe("a red flower", width=128, height=128, steps=4, cfg=4.0, sampler="euler", seed=5)
    return r.with_(**wf)


def test_mask_blur_0_keeps_every_unmasked_pixel(pipe) -> None:
    init, mask = load_image(INIT), _mask()
    res = pipe.generate(_recipe(mask_blur=0), init_image=init, mask=mask)
    out, src = res.uint8()[0], to_uint8(init)[0]
    outside = mask[0].numpy() == 0
    assert np.isfinite(res.images.numpy()).all()
    assert np.array_equal(out[outside], src[outside])  # byte-identical outside the mask
    changed = np.abs(out[~outside].astype(int) - src[~outside].astype(int)).mean()
    print(f"inside the mask: mean change {changed:.1f}/255; outside: 0 of {outside.sum()} pixels differ")
    assert changed > 5  # and the masked area was repainted


def test_blur_and_grow_keep_every_pixel_outside_the_prepared_mask(pipe) -> None:
    init, mask = load_image(INIT), _mask()
    res = pipe.generate(_recipe(mask_blur=3, mask_grow=4), init_image=init, mask=mask)
    prepared = inpaint.prepare_mask(mask, 4, 3)[0].numpy()
    outside = prepared == 0
    assert np.array_equal(res.uint8()[0][outside], to_uint8(init)[0][outside])
    # The feathered band exists: more pixels are touched than the hard mask, fewer than everything.
    assert (mask[0].numpy() > 0).sum() < (~outside).sum() < outside.size


def test_grow_and_blur_shapes() -> None:
    m = _mask(32, 32, (10, 10, 12, 12))
    grown = inpaint.grow(m, 3)
    assert grown[0, 7:15, 7:15].eq(1).all() and grown.sum() == 64
    assert inpaint.grow(grown, -3).equal(m)
    blurred = inpaint.blur(m, 2)
    assert blurred[0, 11, 11] < 1 and blurred[0, 4, 11] > 0  # 3 sigma = 6 px reach
    assert blurred[0, 3, 11] == 0 and blurred[0, 0, 0] == 0
    assert torch.allclose(inpaint.blur(torch.ones(1, 8, 8), 2), torch.ones(1, 8, 8))  # edges replicate


def test_latent_noise_mask_semantics() -> None:
    # ComfyUI KSamplerX0Inpaint: before each model call the unmasked state is the init latent noised
    # to that sigma with the run's noise; after it, the unmasked x0 is the init latent.
    g = torch.Generator().manual_seed(0)
    init, noise, x = (torch.randn(1, 16, 1, 4, 4, generator=g) for _ in range(3))
    mask = torch.zeros(1, 1, 1, 4, 4)
    mask[..., :2, :] = 1.0
    seen = []

    def model(x_in, sigma):
        seen.append(x_in.clone())
        return torch.full_like(x_in, 7.0)

    sigma = torch.tensor([0.6])
    out = inpaint.masked_denoiser(model, init, noise, mask)(x, sigma)
    keep = mask.expand_as(x) == 0
    assert torch.equal(seen[0][~keep], x[~keep])
    assert torch.allclose(seen[0][keep], (0.6 * noise + 0.4 * init)[keep])
    assert torch.equal(out[keep], init[keep]) and (out[~keep] == 7.0).all()


def test_only_masked_repaints_a_crop_and_pastes_back(pipe) -> None:
    init = load_image(INIT)
    mask = _mask(box=(100, 100, 116, 116))
    res = pipe.generate(
        _recipe(mask_blur=2, inpaint_area="only masked", inpaint_padding=8), init_image=init, mask=mask
    )
    assert res.images.shape == (1, 128, 128, 3)
    prepared = inpaint.prepare_mask(mask, 0, 2)[0].numpy()
    outside = prepared == 0
    assert np.array_equal(res.uint8()[0][outside], to_uint8(init)[0][outside])
    assert not np.array_equal(res.uint8()[0][~outside], to_uint8(init)[0][~outside])
    assert any("only masked" in n for n in res.notes)
    box = inpaint.crop_box(torch.from_numpy(prepared)[None], 8, 128, 128)
    assert box.width == box.height  # widened to the 1:1 working aspect
    assert (box.x0, box.y0) == (86, 86) and box.x1 == 128


def test_nan_prediction_stops_with_a_clear_error(pipe) -> None:
    class NaNDiT(torch.nn.Module):
        def prepare_context(self, context):
            return None

        def forward(self, x, sigma, context, **kwargs):
            return torch.full_like(x, float("nan"))

    real = pipe.dit
    pipe.dit = NaNDiT()
    try:
        with pytest.raises(AnimaError, match="NaN/inf at step 1"):
            pipe.generate(_recipe(mask_blur=0), init_image=load_image(INIT), mask=_mask())
    finally:
        pipe.dit = real
    with pytest.raises(AnimaError, match="NaN"):
        inpaint.ensure_finite(torch.tensor([0.0, float("nan")]), "the decoded image")
    bad = load_image(INIT).clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(AnimaError, match="NaN"):
        pipe.generate(_recipe(), init_image=bad, mask=_mask())


def test_api_errors(pipe) -> None:
    init = load_image(INIT)
    with pytest.raises(AnimaError, match="the mask is 64x64 but the init image is 128x128"):
        pipe.generate(_recipe(), init_image=init, mask=torch.ones(1, 64, 64))
    with pytest.raises(AnimaError, match="needs an init image"):
        pipe.generate(_recipe(), mask=_mask())
    with pytest.raises(AnimaError, match="empty"):
        pipe.generate(_recipe(), init_image=init, mask=torch.zeros(1, 128, 128))


def test_cli_mask_of_wrong_size_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    out = tmp_path / "x.png"
    flags = [
        "--dit", str(W / "anima_tiny_dit.safetensors"),
        "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
        "--vae", str(W / "wan21_tiny_vae.safetensors"), "--tokenizer-dir", str(TOKENIZERS),
    ]  # fmt: skip
    rc = main(["generate", "p", "--init-image", str(INIT), "--mask", str(mask), *flags, "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "64x64" in err[0] and "128x128" in err[0]
    assert not out.exists()
    rc = main(["generate", "p", "--mask", str(mask), *flags, "-o", str(out)])
    assert rc == 2 and "--init-image" in capsys.readouterr().err and not out.exists()
    rc = main(["generate", "p", "--init-image", str(INIT), "--mask", str(mask), "--mask-blur", "-1", *flags])
    assert rc == 2 and "mask blur" in capsys.readouterr().err


def test_cli_inpaint_png_keeps_unmasked_bytes_and_reproduces(tmp_path) -> None:
    mask = tmp_path / "mask.png"
    m = Image.new("L", (128, 128), 0)
    m.paste(255, (40, 30, 90, 80))
    m.save(mask)
    out, again = tmp_path / "in.png", tmp_path / "again.png"
    flags = [
        "--dit", str(W / "anima_tiny_dit.safetensors"),
        "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
        "--vae", str(W / "wan21_tiny_vae.safetensors"), "--tokenizer-dir", str(TOKENIZERS),
        "--dtype", "fp32", "--no-progress",
    ]  # fmt: skip
    args = ["generate", "red flower", "--init-image", str(INIT), "--mask", str(mask), "--mask-blur", "0"]
    assert main([*args, "--steps", "3", "--seed", "8", *flags, "-o", str(out)]) == 0
    got, src = np.asarray(Image.open(out).convert("RGB")), np.asarray(Image.open(INIT).convert("RGB"))
    outside = np.asarray(m) == 0
    assert np.array_equal(got[outside], src[outside]) and not np.array_equal(got[~outside], src[~outside])
    assert main(["generate", "--from-png", str(out), *flags, "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
