"""diffusers-format folders: our exporter writes one, diffusers reads it, and so do we."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, TOKENIZERS

from anima.errors import AnimaError
from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.weights.export import export_diffusers
from anima.weights.safetensors import load_mmap

W = TINY / "weights"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("diffusers") / "Anima-Tiny-Diffusers"
    return export_diffusers(
        W / "anima_tiny_dit.safetensors",
        W / "qwen3_tiny_te.safetensors",
        W / "wan21_tiny_vae.safetensors",
        TOKENIZERS / "qwen",
        TOKENIZERS / "t5",
        out,
    )


def test_folder_generates_the_same_image(folder: Path) -> None:
    recipe = Recipe(prompt="1girl, (silver hair:1.2)", width=64, height=64, steps=3, seed=3, sampler="euler")
    kw = dict(device="cpu", dtype="fp32")
    a = Pipeline.from_files(
        W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, **kw,
    ).generate(recipe)  # fmt: skip
    b = Pipeline.from_pretrained(folder, **kw).generate(recipe)
    assert torch.equal(a.latents, b.latents)
    assert torch.equal(a.images, b.images)


def test_diffusers_reads_our_folder(folder: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    from transformers import Qwen3Model

    from anima.weights.loading import load_dit

    ours_dit, ours_ad = load_dit(W / "anima_tiny_dit.safetensors", dtype=None)
    tr = diffusers.CosmosTransformer3DModel.from_pretrained(folder / "transformer")
    cond = diffusers.AnimaTextConditioner.from_pretrained(folder / "text_conditioner")
    vae = diffusers.AutoencoderKLQwenImage.from_pretrained(folder / "vae")
    te = Qwen3Model.from_pretrained(folder / "text_encoder")
    from anima.weights.diffusers_keys import dit_to_diffusers, vae_to_diffusers

    theirs = tr.state_dict()
    for k, v in ours_dit.state_dict().items():
        assert torch.equal(theirs[dit_to_diffusers(k)].to(v.dtype), v), k
    theirs = cond.state_dict()
    for k, v in ours_ad.state_dict().items():
        assert torch.equal(theirs[k].to(v.dtype), v), k
    # The VAE against the file itself: our module keeps only the causal convs' last temporal tap.
    theirs = vae.state_dict()
    for k, v in load_mmap(W / "wan21_tiny_vae.safetensors").items():
        assert torch.equal(theirs[vae_to_diffusers(k)].to(v.dtype), v), k
    assert te.config.num_hidden_layers == 2 and te.config.head_dim == 64


def test_export_refuses_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(AnimaError, match="looks like a Qwen-Image"):
        vae = W / "wan21_tiny_vae.safetensors"
        te = W / "qwen3_tiny_te.safetensors"
        export_diffusers(vae, te, vae, TOKENIZERS / "qwen", TOKENIZERS / "t5", tmp_path / "x")
