"""`anima train` with ``network = "lllite"``: the file it writes follows the reference loader's rules,
an untrained patch is exactly the base model, and the shipped demo position patch works."""

from __future__ import annotations

import re

import pytest
import torch

from anima.demo import control_cli, dataset, default_model
from anima.model.lllite import LLLite
from anima.train.config import TrainConfig
from anima.train.lllite import patch_config
from anima.train.trainer import Trainer
from anima.weights.header import read_header
from anima.weights.lllite import load_lllite
from anima.weights.loading import load_dit

# The reference loader's rules (ComfyUI comfy/ldm/anima/lllite.py, ModelPatchLoader): detected by this key,
# module names of this form, version "2", sizes from these shapes.
DETECT = "lllite_conditioning1.conv1.weight"
MODULE = re.compile(r"lllite_dit_blocks_(\d+)_(self_attn_[qkv]_proj|cross_attn_q_proj|mlp_layer1)$")


def _small_dataset(root, n: int = 8) -> None:
    (root / "images").mkdir(parents=True)
    (root / "control").mkdir()
    for i, (combo, text) in enumerate(dataset.eval_prompts(dataset.all_combos()[: n * 7 : 7])):
        scene = dataset.Scene(*combo)
        dataset.render(scene).save(root / "images" / f"{i:03d}.png")
        (root / "images" / f"{i:03d}.txt").write_text(text)
        dataset.render(control_cli.control_scene(scene)).save(root / "control" / f"{i:03d}.png")


@pytest.mark.slow  # a real (2-step) training run: model loads, caches, backward passes
def test_trained_file_follows_the_reference_format(tmp_path) -> None:
    m = default_model()
    _small_dataset(tmp_path / "data")
    cfg = TrainConfig(
        dit=str(m.dit), text_encoder=str(m.text_encoder), vae=str(m.vae), tokenizer_dir=str(m.tokenizer_dir),
        data_dir=str(tmp_path / "data" / "images"), control_dir=str(tmp_path / "data" / "control"),
        resolution=64, bucket_step=16, network="lllite", lllite_cond_dim=16, lllite_cond_emb_dim=8,
        lllite_mlp_dim=8, lllite_targets="self_attn_q_proj,cross_attn_q_proj,mlp_layer1", lr=1e-2,
        steps=2, batch_size=4, precision="fp32", device="cpu", output_dir=str(tmp_path / "out"),
        output_name="patch", log_backend="csv",
    )  # fmt: skip
    path = Trainer(cfg).run()
    header = read_header(path)
    shapes = header.shapes
    assert DETECT in shapes and header.metadata["lllite.version"] == "2"
    assert header.metadata["lllite.inpaint_masked_input"] == "false"
    names = {k.split(".", 1)[0] for k in shapes if k.startswith("lllite_dit_blocks_")}
    assert all(MODULE.fullmatch(n) for n in names) and len(names) == 4 * 3  # 4 demo blocks x 3 targets
    assert all(k.startswith("lllite_conditioning1.") or k.split(".", 1)[0] in names for k in shapes)
    d = shapes["lllite_conditioning1.conv3.weight"][0]
    e, w = shapes["lllite_conditioning1.proj.weight"][0], 128
    assert shapes[DETECT] == (d // 2, 3, 4, 4) and (d, e) == (16, 8)
    for n in names:
        mlp = shapes[f"{n}.down.weight"][0]
        assert shapes[f"{n}.down.weight"] == (mlp, w) and shapes[f"{n}.up.weight"] == (w, mlp)
        assert shapes[f"{n}.mid.weight"] == (mlp, mlp + e)
        assert shapes[f"{n}.cond_to_film.weight"] == (2 * mlp, e)
        assert shapes[f"{n}.depth_embed"] == (e,)
    dit = load_dit(m.dit)[0]
    patch = load_lllite(path, dit=dit.cfg)  # and our strict loader takes it for the demo DiT
    assert patch.module(0, "mlp_layer1").up.weight.abs().sum() > 0  # trained away from its zero start


def test_an_untrained_patch_is_exactly_the_base_model() -> None:
    from anima.workflows.control import ControlPatch, ControlRun

    dit = load_dit(default_model().dit)[0]
    cfg = TrainConfig(network="lllite", lllite_cond_dim=16, lllite_cond_emb_dim=8, lllite_mlp_dim=8)
    lllite = LLLite(patch_config(cfg, dit))
    lllite.init_for_training(torch.Generator().manual_seed(0))
    x, sigma, ctx = torch.randn(2, 16, 1, 8, 8), torch.full((2,), 0.7), torch.randn(2, 512, 64)
    run = ControlRun([ControlPatch(lllite, torch.rand(1, 64, 64, 3), None, 1.0, 1.0, 0.0)])
    with torch.no_grad(), run.installed(dit), run.calling(x, sigma):
        patched = dit(x, sigma, ctx)
    with torch.no_grad():
        assert torch.equal(patched, dit(x, sigma, ctx))


@pytest.mark.slow
def test_demo_position_patch_puts_the_shape_where_the_control_says() -> None:
    """The shipped patch (see anima/demo/model/README.md for how it was trained), on 20 held-out prompts
    whose position word disagrees with the control image: the prompt-only baseline lands there ~never."""
    patch = default_model().dit.parent / "anima-demo-position-lllite.safetensors"
    with_patch = control_cli.evaluate(patch, count=20)
    without = control_cli.evaluate(None, count=20)
    assert with_patch.at_control >= 16 and without.at_control <= 4
