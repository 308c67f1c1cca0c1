"""Shared pieces of the ComfyUI graph tests: the comfy-workflows fixture set, its models folder
built in a tmp dir as its README lays it out, pixel comparison with the CPU-family allowance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import SHARED, TINY, TOKENIZERS
from PIL import Image

FIX = SHARED / "fixtures" / "comfy-workflows"
LLLITE = SHARED / "fixtures" / "anima-lllite"
CASES = json.loads((FIX / "cases.json").read_text())["cases"]
BY_ID = {c["id"]: c for c in CASES}
LLLITE_CASES = ("wf_f_lllite_control", "wf_f2_lllite_inpaint_alpha_mask")


def build_models_dir(root: Path) -> Path:
    """``cases.json`` -> ``models_layout`` as symlinks under `root`/models, plus the tokenizers in
    models/tokenizers/{qwen,t5} (where anima's discovery finds them). Returns the models folder."""
    layout = json.loads((FIX / "cases.json").read_text())["models_layout"]
    models = root / "models"
    for rel, src in layout.items():
        target = models / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((FIX / src).resolve())
    (models / "tokenizers").mkdir(parents=True, exist_ok=True)
    for name in ("qwen", "t5"):
        (models / "tokenizers" / name).symlink_to(TOKENIZERS / name)
    return models


def fixture_pixel_allowance() -> int:
    """Levels per pixel allowed against the fixture PNGs.

    The fixtures were computed on an AVX2-only CPU. torch's float32 kernels (matmul blocking,
    vectorised exp/pow) round differently on AVX-512 or ARM, which moves final latents by ~1e-5 and
    can flip a pixel across a truncation boundary: 1 level where the CPU family is the fixtures'
    own, 2 across families (the fixture README's suggested tolerance)."""
    import torch

    return 1 if torch.backends.cpu.get_cpu_capability() == "AVX2" else 2


def pixel_diff(a: Path, b: Path) -> int:
    x = np.asarray(Image.open(a).convert("RGB")).astype(int)
    y = np.asarray(Image.open(b).convert("RGB")).astype(int)
    assert x.shape == y.shape, (x.shape, y.shape)
    return int(np.abs(x - y).max())


def tiny_weights() -> Path:
    return TINY / "weights"
