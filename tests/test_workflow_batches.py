"""Batch count (seed + k per batch) and variation seeds (slerp of the initial noise), CLI and API."""

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
from anima.jobs.batches import batch_recipes
from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.sampling.noise import initial_noise
from anima.workflows.variations import slerp, varied_noise

W = TINY / "weights"
MODEL_FLAGS = [
    "--dit", str(W / "anima_tiny_dit.safetensors"),
    "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
    "--vae", str(W / "wan21_tiny_vae.safetensors"),
    "--tokenizer-dir", str(TOKENIZERS), "--dtype", "fp32", "--no-progress",
]  # fmt: skip
SMALL = ["--size", "64x64", "--steps", "3", "--sampler", "euler"]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_batch_recipes_increment_the_seed() -> None:
    r = Recipe("x", seed=2**64 - 2)
    assert [b.seed for b in batch_recipes(r, 3)] == [2**64 - 2, 2**64 - 1, 0]
    varied = Recipe("x", seed=7).with_(variation_seed=10, variation_strength=0.3)
    batches = batch_recipes(varied, 3)
    assert [b.seed for b in batches] == [7, 7, 7]  # variations of one image: the variation seed moves
    assert [b.setting("variation_seed") for b in batches] == [10, 11, 12]
    with pytest.raises(AnimaError):
        batch_recipes(r, 0)


def test_slerp_endpoints_and_norm() -> None:
    a, b = initial_noise(1, (2, 16, 1, 8, 8)), initial_noise(2, (2, 16, 1, 8, 8))
    assert slerp(0.0, a, b) is a and slerp(1.0, a, b) is b
    mid = slerp(0.5, a, b)
    lerp = 0.5 * a + 0.5 * b
    # Nearly orthogonal high-dimensional draws: slerp keeps the norm where lerp shrinks it by ~1/sqrt(2).
    for i in range(2):
        na, nb = a[i].norm().item(), b[i].norm().item()
        assert abs(mid[i].norm().item() - (na + nb) / 2) / na < 0.02
        assert lerp[i].norm().item() < 0.8 * na
    assert torch.equal(varied_noise(1, a.shape), a)
    assert torch.equal(varied_noise(1, a.shape, 2, 0.0), a)
    assert torch.equal(varied_noise(1, a.shape, 2, 1.0), b)
    parallel = slerp(0.25, a, 2 * a)  # the lerp fallback
    assert torch.allclose(parallel, 1.25 * a, atol=1e-5)


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


def test_variation_strength_moves_between_the_two_seeds(pipe) -> None:
    base = Recipe("1girl", width=64, height=64, steps=3, sampler="euler", seed=11)
    img = {s: pipe.generate(base.with_(seed=s)).uint8() for s in (11, 99)}
    at = {
        t: pipe.generate(base.with_(variation_seed=99, variation_strength=t)).uint8()
        for t in (0.0, 0.3, 1.0)
    }
    assert np.array_equal(at[0.0], img[11]) and np.array_equal(at[1.0], img[99])
    d_own = np.abs(at[0.3].astype(int) - img[11]).mean()
    d_other = np.abs(at[0.3].astype(int) - img[99]).mean()
    print(
        f"variation 0.3: {d_own:.1f}/255 from the seed's image, {d_other:.1f}/255 from the variation seed's"
    )
    assert 0 < d_own < d_other


def test_cli_batch_count_and_reproduction(tmp_path, capsys) -> None:
    out = tmp_path / "b.png"
    args = ["generate", "1girl", *SMALL, "--seed", "40", "--batch-count", "3", *MODEL_FLAGS, "-o", str(out)]
    assert main(args) == 0
    paths = [tmp_path / f"b_{i}.png" for i in range(3)]
    assert [read_recipe(p).seed for p in paths] == [40, 41, 42]
    assert "seeds: 40..42" in capsys.readouterr().err
    assert not np.array_equal(_pixels(paths[0]), _pixels(paths[1]))
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(paths[1]), *MODEL_FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(_pixels(again), _pixels(paths[1]))


def test_cli_variation_reproduces_from_png(tmp_path) -> None:
    out = tmp_path / "v.png"
    flags = ["--seed", "5", "--variation-seed", "6", "--variation-strength", "0.25"]
    assert main(["generate", "1girl", *SMALL, *flags, *MODEL_FLAGS, "-o", str(out)]) == 0
    params = read_recipe(out)
    assert dict(setting_pairs(params)) == {"Variation seed": "6", "Variation seed strength": "0.25"}
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(_pixels(again), _pixels(out))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--batch-count", "0"], "--batch-count"),
        (["--variation-strength", "0.5"], "variation seed"),
        (["--variation-seed", "1", "--variation-strength", "1.5"], "variation strength"),
    ],
)
def test_bad_flags_are_one_line_errors(tmp_path, capsys, flags, needle) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "p", *flags, *MODEL_FLAGS, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()
