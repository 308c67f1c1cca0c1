"""Regional prompts: syntax, token weights, the attention inputs of each region, equality with the
plain prompt, composition with CFG / NAG / LoRA / prompt editing, the CLI and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY, TINY_MODEL_ARGS, tiny_pipeline
from PIL import Image

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import read_png_text, read_recipe
from anima.lora.file import save_lora
from anima.lora.modules import LoRA
from anima.lora.targets import Target
from anima.pipeline import Pipeline
from anima.recipe import Recipe, Region
from anima.recipe.regions import couple
from anima.workflows.regions import RegionalControl, regional_attention, token_weights

W = TINY / "weights"
FLAGS = [*TINY_MODEL_ARGS, "--dtype", "fp32", "--no-progress"]
HALVES = (Region("red hair", rect=(0, 0, 0.5, 1)), Region("blue hair", rect=(0.5, 0, 1, 1)))


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


def _recipe(**kw) -> Recipe:
    base = {"prompt": "2girls", "width": 64, "height": 64, "steps": 3, "sampler": "euler", "seed": 4}
    return Recipe.make(**(base | kw))


def test_region_syntax_and_couple() -> None:
    assert Region.parse("0,0,0.5,1: blonde girl, (smile:1.2)") == Region(
        "blonde girl, (smile:1.2)", rect=(0.0, 0.0, 0.5, 1.0)
    )
    assert Region.parse("masks/left.png: a").mask == "masks/left.png"
    base, regions = couple("2girls, park\nred hair\nblue hair", "columns")
    assert base == "2girls, park" and [r.rect for r in regions] == [(0, 0, 0.5, 1), (0.5, 0, 1, 1)]
    assert [r.rect for r in couple("x\na\nb", "rows")[1]] == [(0, 0, 1, 0.5), (0, 0.5, 1, 1)]
    for bad, needle in [("blonde girl", "PLACE: PROMPT"), ("0,0,2,1: a", "x0,y0,x1,y1 in 0..1"),
                        ("0.5,0,0.2,1: a", "x0 < x1")]:  # fmt: skip
        with pytest.raises(AnimaError, match=needle):
            Region.parse(bad)
    with pytest.raises(AnimaError, match="one line per region"):
        couple("only a base prompt", "columns")
    with pytest.raises(AnimaError, match="regions 1 and 2 overlap") as err:
        _recipe(regions=(Region("a", rect=(0, 0, 0.6, 1)), HALVES[1]))
    assert err.value.setting == "regions_overlap"
    blended = _recipe(regions=(Region("a", rect=(0, 0, 0.6, 1)), HALVES[1]), regions_overlap="blend")
    assert len(blended.regions) == 2


def test_token_weights() -> None:
    masks = torch.zeros(2, 32, 64)
    masks[0, :, :32], masks[1, :, 32:] = 1, 1  # left, right halves: tokens grid 2 x 4
    w = token_weights(masks, (1, 2, 4), 0.0, "error")
    assert w.tolist() == [[0] * 8, [1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1]]
    w = token_weights(masks, (1, 2, 4), 0.25, "error")
    assert torch.allclose(w.sum(0), torch.ones(8)) and torch.allclose(w[0], torch.full((8,), 0.25))
    masks[1] = 1  # overlapping everywhere on the left: blend shares it
    w = token_weights(masks, (1, 2, 4), 0.0, "blend")
    assert w[:, 0].tolist() == [0.0, 0.5, 0.5] and w[:, 2].tolist() == [0.0, 0.0, 1.0]
    w = token_weights(masks[:1], (2, 2, 4), 0.0, "error")  # a second (reference) frame reads the base
    assert w[:, 8:].tolist() == [[1] * 8, [0] * 8]


class _Recorder(torch.nn.Module):
    """Stands in for a block's cross-attention and records what it is asked to attend."""

    def __init__(self, inner, calls) -> None:
        super().__init__()
        self.inner, self.calls = inner, calls

    def forward(self, x, context=None, rope=None):
        self.calls.append((x.detach().clone(), context))
        return self.inner(x, context, rope)


@pytest.mark.parametrize("base_weight", [0.0, 0.3])
def test_each_regions_tokens_attend_only_to_their_prompt(pipe, base_weight) -> None:
    """Done-when 2a, on the attention inputs: with two regions (left and right half), the queries
    sent with region A's context are exactly the image tokens of A, and likewise for B; the base
    context is attended only when it has weight, by every token, at that weight."""
    dit = pipe.dit
    base, left, right = pipe.contexts(["2girls", "red hair", "blue hair"], {})
    masks = torch.zeros(2, 64, 64)
    masks[0, :, :32], masks[1, :, 32:] = 1, 1
    control = RegionalControl(masks, [[left], [right]], base_weight=base_weight, overlap="error")
    calls: list = []
    inputs: list = []
    originals = [blk.cross_attn for blk in dit.blocks]
    try:
        for blk in dit.blocks:
            blk.cross_attn = _Recorder(blk.cross_attn, calls)
        with regional_attention(dit, control):
            dit.blocks[0].cross_attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0].clone()))
            x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
            with control.guiding(0, (1, 4, 4), torch.device("cpu")):
                dit(x, torch.tensor([0.7]), base)
    finally:
        for blk, inner in zip(dit.blocks, originals, strict=True):
            blk.cross_attn = inner
    tokens = torch.arange(16).view(4, 4)
    left_ids, right_ids = tokens[:, :2].flatten(), tokens[:, 2:].flatten()
    block0 = calls[: len(calls) // len(dit.blocks)]
    full = inputs[0]  # the block-0 cross-attention input, all 16 tokens
    by_context = {}
    for q, ctx in block0:
        named = (("base", base), ("left", left), ("right", right))
        name = next(n for n, c in named if torch.equal(ctx[:1], c))
        by_context[name] = q
    assert torch.equal(by_context["left"], full[:, left_ids])
    assert torch.equal(by_context["right"], full[:, right_ids])
    assert ("base" in by_context) == (base_weight > 0)
    if base_weight > 0:
        assert torch.equal(by_context["base"], full)
    assert len(calls) == len(dit.blocks) * (3 if base_weight else 2)


def test_one_region_over_the_whole_image_is_the_plain_prompt(pipe) -> None:
    """Done-when 2b. At CFG 1 the two runs make the same DiT calls on the same prompt's states, up to
    float rounding: the region run packs its prompts into one text-encoder pass with other texts, and
    on some kernels (MKL's AVX2 sgemm) a row's sums round differently with the matrix's row count
    (9.5e-7 there; bit for bit on AVX-512). At CFG 4 regions also run the cond forward apart from the
    uncond one (plain CFG batches them): within 1e-5 of the plain image."""
    whole = (Region("1girl, red hair", rect=(0, 0, 1, 1)),)
    for cfg, tol in ((1.0, 1e-5), (4.0, 1e-5)):
        plain = pipe.generate(_recipe(prompt="1girl, red hair", cfg=cfg)).images
        regional = pipe.generate(_recipe(prompt="landscape", cfg=cfg, regions=whole, regions_base_weight=0.0))
        assert (regional.images - plain).abs().max() <= tol, cfg
    other = pipe.generate(_recipe(prompt="landscape", cfg=1.0, regions=whole, regions_base_weight=0.5)).images
    assert (other - plain).abs().max() > 1e-3  # the base prompt's share shows


def test_regions_compose_with_nag_lora_and_prompt_editing(pipe, tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    lora = save_lora({Target("dit", "blocks.0.cross_attn.q_proj"): LoRA(
        torch.randn(4, 256, generator=g) * 0.3, torch.randn(256, 4, generator=g) * 0.3, alpha=4.0)},
        tmp_path / "l.safetensors", "sd-scripts")  # fmt: skip
    whole = (Region("1girl, [red:blue:0.5] hair", rect=(0, 0, 1, 1)),)
    kw = {"cfg": 1.0, "nag_scale": 3.0, "loras": ((str(lora), 1.0),)}
    plain = pipe.generate(_recipe(prompt="1girl, [red:blue:0.5] hair", **kw)).images
    regional = pipe.generate(_recipe(prompt="x", regions=whole, regions_base_weight=0.0, **kw)).images
    # NAG inside regions, the LoRA'd layers, per-step prompts. Not bit for bit: the region run encodes
    # its prompts in one text-encoder pass with other texts (the same states up to summation order).
    print(f"plain vs one whole-image region: max {(plain - regional).abs().max().item():.2e}")
    torch.testing.assert_close(plain, regional, atol=1e-4, rtol=0)
    two = pipe.generate(_recipe(regions=HALVES, cfg=4.0, nag_scale=3.0)).images  # CFG + NAG + regions
    assert torch.isfinite(two).all() and (two - plain).abs().max() > 1e-3
    assert all(type(b.cross_attn).__name__ == "Attention" for b in pipe.dit.blocks)  # restored


def test_end_step_limits_the_regional_forwards(pipe, monkeypatch) -> None:
    steps = []
    original = RegionalControl.guiding

    def spy(self, step, grid, device):
        steps.append((step, self.active_steps is None or step < self.active_steps))
        return original(self, step, grid, device)

    monkeypatch.setattr(RegionalControl, "guiding", spy)
    pipe.generate(_recipe(regions=HALVES, regions_end_step=1, cfg=1.0))
    assert steps == [(0, True), (1, False), (2, False)]


def test_cli_regions_recorded_and_rerun(tmp_path, capsys) -> None:
    out = tmp_path / "r.png"
    flags = ["2girls", "--size", "64x64", "--steps", "2", "--sampler", "euler", "--seed", "5"]
    regions = ["--region", "0,0,0.5,1: red hair", "--region", "0.5,0,1,1: blue hair"]
    regions += ["--regions-base-weight", "0.1"]
    assert main(["generate", *flags, *regions, *FLAGS, "-o", str(out)]) == 0
    recipe = read_recipe(out)
    assert recipe.regions == HALVES and recipe.regional.base_weight == 0.1
    assert 'Regions: "[{\\"prompt\\": \\"red hair\\"' in read_png_text(out)["parameters"]
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(out)))
    couple_png = tmp_path / "c.png"
    assert main(["generate", "2girls\nred hair\nblue hair", "--couple", "columns", *flags[1:], *FLAGS,
                 "--regions-base-weight", "0.1", "-o", str(couple_png)]) == 0  # fmt: skip
    assert read_recipe(couple_png).regions == HALVES and read_recipe(couple_png).prompt == "2girls"
    assert np.array_equal(np.asarray(Image.open(couple_png)), np.asarray(Image.open(out)))
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--region", "0,0,0.6,1: a", "--region", "0.5,0,1,1: b"], "regions 1 and 2 overlap"),
        (["--region", "MASK32: a"], "region 1's mask is 32x64, the image is 64x64"),
        (["--region", "MASKOVER: a", "--region", "0,0,0.5,1: b"], "regions 1 and 2 overlap"),
        (["--region", "missing.png: a"], "region mask missing.png not found"),
        (["--region", "0,0,1: a"], "a rectangle is four numbers"),
        (["--region", "blonde girl"], "PLACE: PROMPT"),
        (["--regions-base-weight", "2"], "regions base weight"),
    ],
)
def test_bad_region_inputs_are_one_line(tmp_path, capsys, monkeypatch, extra, needle) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((64, 32), 255, np.uint8)).save(tmp_path / "m32.png")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "over.png")
    extra = [e.replace("MASK32", "m32.png").replace("MASKOVER", "over.png") for e in extra]
    out = tmp_path / "x.png"
    assert main(["generate", "p", "--size", "64x64", "--steps", "1", *extra, *FLAGS, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()
