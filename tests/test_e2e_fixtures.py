"""End to end against ComfyUI: files + prompt + seed + settings -> the same latents and PNG bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, TOKENIZERS, load_st
from PIL import Image

from anima.imageio import load_image
from anima.pipeline import Pipeline
from anima.recipe import Recipe

CASES = [c for c in json.loads((TINY / "cases.json").read_text())["cases"] if c["kind"] != "component"]


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    w = TINY / "weights"
    return Pipeline.from_files(
        w / "anima_tiny_dit.safetensors",
        w / "qwen3_tiny_te.safetensors",
        w / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS,
        device="cpu",
        dtype="fp32",
    )


def _recipe(case: dict) -> Recipe:
    return Recipe(
        prompt=case["prompt"],
        negative_prompt=case["negative_prompt"],
        width=case["width"],
        height=case["height"],
        steps=case["steps"],
        cfg=case["cfg"],
        sampler=case["sampler"],
        scheduler=case["scheduler"],
        shift=case["shift"],
        seed=case["seed"],
        batch_size=case["batch_size"],
        denoise=case.get("denoise", 1.0),
    )


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_matches_comfyui(pipe: Pipeline, case: dict) -> None:
    ref = load_st(TINY / case["files"]["outputs"])
    init = load_image(TINY / case["files"]["init_image"]) if case["kind"] == "img2img" else None
    seen: list[torch.Tensor] = []
    result = pipe.generate(_recipe(case), init_image=init, progress=lambda i, n: seen.append(i))
    assert seen == list(range(1, case["steps"] + 1))

    lat = result.latents
    err = (lat - ref["latent_normalized"]).abs().max().item()
    scale = ref["latent_normalized"].abs().max().item()
    assert err <= 1e-4 * max(1.0, scale), f"latent max err {err}"
    img_err = (result.images - ref["image"]).abs().max().item()
    assert img_err <= 1e-4, f"image max err {img_err}"

    ours = result.uint8()
    for b, png in enumerate(case["files"]["pngs"]):
        theirs = np.asarray(Image.open(TINY / png).convert("RGB"))
        diff = np.abs(ours[b].astype(int) - theirs.astype(int))
        assert diff.max() <= 1, f"{png}: {diff.max()} levels"
