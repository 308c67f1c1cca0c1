"""Guidance variants pinned on small tensors; turbo preset; NAG on the DiT cross-attention."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import TINY, TOKENIZERS

from anima.cli import build_parser
from anima.cli.generate import recipe_from_args
from anima.interop.a1111 import setting_pairs
from anima.pipeline import Pipeline
from anima.recipe import Recipe, settings
from anima.sampling import guidance
from anima.workflows.nag import NagControl, NagCrossAttention, nag_attention, nag_combine

W = TINY / "weights"


def t(*v: float) -> torch.Tensor:
    return torch.tensor([list(v)], dtype=torch.float64)


def test_cfg() -> None:
    assert torch.equal(guidance.cfg(t(1, 2), t(0, 1), 3.0), t(3, 4))


def test_cfg_zero_star_formula() -> None:
    # residuals x-c = (1, 1), x-u = (0.5, 2): alpha = 2.5 / 4.25 = 10/17; out = a u + s (c - a u)
    out = guidance.cfg_zero_star(t(0, 1), t(0.5, 0), 3.0, x=t(1, 2))
    assert torch.allclose(out, t(-10 / 17, 3))
    same = guidance.cfg_zero_star(t(0, 1), t(0.5, 0), 1.0, x=t(1, 2))
    assert torch.allclose(same, t(0, 1))  # scale 1 is the cond prediction


def test_apg_formula() -> None:
    c, u = t(3, 4), t(3, 0)  # diff (0, 4); unit(c) = (0.6, 0.8); parallel (1.92, 2.56)
    out, running = guidance.apg(c, u, 2.0, eta=0.0)
    assert torch.allclose(out, t(1.08, 5.44)) and running is None
    out, _ = guidance.apg(c, u, 2.0, eta=1.0)
    assert torch.allclose(out, guidance.cfg(c, u, 2.0))  # eta 1, no cap, no momentum: plain CFG
    out, _ = guidance.apg(c, u, 2.0, eta=0.0, norm_threshold=2.0)  # |diff| 4 capped to 2
    assert torch.allclose(out, t(2.04, 4.72))
    g = guidance.Guider(guidance.GuidanceConfig("apg", 2.0, apg_momentum=0.5))
    g(c, u, x=t(0, 0), sigma=torch.ones(1))
    out = g(c, u, x=t(0, 0), sigma=torch.ones(1))  # running = 0.5 * (0, 4) + (0, 4) = (0, 6)
    assert torch.allclose(out, t(0.12, 6.16))


def test_rescale_cfg_formula() -> None:
    c, u, x, s = t(1, -1, 1, -1), t(0, 0, 0, 0), t(0, 0, 0, 0), torch.ones(1, dtype=torch.float64)
    # v_c = -c, v_cfg = 3 v_c, rescaled to std(v_c) -> v_c; 0.7 v_c + 0.3 * 3 v_c = 1.6 v_c -> x0 = 1.6 c
    assert torch.allclose(guidance.rescale_cfg(c, u, 3.0, x, s, 0.7), 1.6 * c)
    assert torch.allclose(guidance.rescale_cfg(c, u, 3.0, x, s, 0.0), guidance.cfg(c, u, 3.0))
    # x = 1, sigma 0.5: v_c = (0, 4, 0, 4), v_u = 2, v_cfg = (-4, 8, -4, 8), std ratio 1/3 -> v = v_cfg / 3
    x2, s2 = t(1, 1, 1, 1), 0.5 * s
    assert torch.allclose(guidance.rescale_cfg(c, u, 3.0, x2, s2, 1.0), t(5 / 3, -1 / 3, 5 / 3, -1 / 3))


def test_every_variant_is_the_cond_prediction_at_scale_1() -> None:
    g = torch.Generator().manual_seed(0)
    c, u, x = (torch.randn(2, 16, 1, 4, 4, generator=g) for _ in range(3))
    for kind in guidance.GUIDANCES:
        out = guidance.Guider(guidance.GuidanceConfig(kind, 1.0))(c, u, x, torch.full((2,), 0.5))
        assert torch.allclose(out, c, atol=1e-5), kind
    assert guidance.GUIDANCES == settings.GUIDANCES


def test_nag_formula() -> None:
    # scale 2: guided = 2 z+ - z-; L1 ratio 8/2 = 4 > tau 2.5 -> scaled by 2.5/4; alpha blends
    out = nag_combine(t(1, 1), t(-2, -2), scale=2.0, tau=2.5, alpha=0.25)
    assert torch.allclose(out, t(0.25 * 2.5 + 0.75, 0.25 * 2.5 + 0.75))
    out = nag_combine(t(1, 1), t(0, 2), scale=2.0, tau=2.5, alpha=0.5)  # ratio 1: no cap
    assert torch.allclose(out, t(1.5, 0.5))


def test_turbo_preset_and_explicit_flags() -> None:
    p = build_parser()
    r = recipe_from_args(p.parse_args(["generate", "x", "--preset", "turbo"]))
    assert (r.cfg, r.steps, r.sampler) == (1.0, 10, "er_sde")
    assert r.setting("nag_scale") == 5.0
    r = recipe_from_args(
        p.parse_args(["generate", "x", "--preset", "turbo", "--steps", "8", "--nag-scale", "3"])
    )
    assert r.steps == 8 and r.setting("nag_scale") == 3.0
    r = recipe_from_args(p.parse_args(["generate", "x", "--preset", "turbo", "-n", ""]))
    assert not r.nag.on  # no negative prompt: nothing for NAG to do
    r = recipe_from_args(p.parse_args(["generate", "x", "--guidance", "apg", "--apg-eta", "0.5"]))
    assert dict(setting_pairs(r)) == {"Guidance": "apg", "APG eta": "0.5"}


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline.from_files(
        W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, device="cpu", dtype="fp32", release_text_encoder=False,  # tests encode too
    )  # fmt: skip


def test_nag_wrapper_matches_the_plain_layer_and_is_restored(pipe) -> None:
    dit = pipe.dit
    originals = [b.cross_attn for b in dit.blocks]
    keys = list(dit.state_dict())
    ctx = pipe.conditioner.encode("a cat").context
    x = torch.randn(2, 64, dit.cfg.model_channels, generator=torch.Generator().manual_seed(1))
    attn = originals[0]
    control = NagControl(scale=5.0)
    wrapped = NagCrossAttention(attn, control)
    with torch.no_grad():
        plain = attn(x, ctx.expand(2, -1, -1))
        # negative == positive: the extrapolation is the identity
        with control.guiding(ctx):
            assert torch.allclose(wrapped(x, ctx.expand(2, -1, -1)), plain, atol=1e-5)
        assert control.negative is None
        assert torch.equal(wrapped(x, ctx.expand(2, -1, -1)), plain)
    with pytest.raises(RuntimeError), nag_attention(dit, control):
        assert all(isinstance(b.cross_attn, NagCrossAttention) for b in dit.blocks)
        raise RuntimeError("boom")
    assert all(b.cross_attn is o for b, o in zip(dit.blocks, originals, strict=True))
    assert list(dit.state_dict()) == keys


class Counter(torch.nn.Module):
    """Wraps the DiT and counts the batch of every call (other attributes: the DiT's)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, []

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, x, sigma, context, **kwargs):
        self.calls.append(x.shape[0])
        return self.inner(x, sigma, context, **kwargs)


def test_turbo_with_nag_uses_one_forward_per_step_and_the_negative_matters(pipe) -> None:
    base = Recipe("1girl", "red", width=64, height=64, steps=4, cfg=1.0, sampler="euler", seed=3)
    real = pipe.dit
    pipe.dit = counter = Counter(real)
    try:
        plain = pipe.generate(base).uint8()
        n_plain = list(counter.calls)
        counter.calls.clear()
        nag = pipe.generate(base.with_(nag_scale=5.0)).uint8()
        n_nag = list(counter.calls)
        other_neg = pipe.generate(base.with_(negative_prompt="blue").with_(nag_scale=5.0)).uint8()
    finally:
        pipe.dit = real
    assert n_plain == n_nag == [1, 1, 1, 1]  # CFG 1: no uncond pass, with or without NAG
    assert all(type(b.cross_attn).__name__ == "Attention" for b in real.blocks)
    d = np.abs(nag.astype(int) - plain).mean()
    d_neg = np.abs(nag.astype(int) - other_neg).mean()
    print(f"NAG vs none: {d:.1f}/255 mean; NAG 'red' vs 'blue' negative: {d_neg:.1f}/255")
    assert d > 0.5 and d_neg > 0.5


def test_nag_costs_less_than_a_second_forward(pipe) -> None:
    dit = pipe.dit
    x = torch.randn(1, 16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5])
    pos = pipe.conditioner.encode("1girl").context
    neg = pipe.conditioner.encode("red").context
    control = NagControl()

    def best(fn) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.inference_mode():
        one = best(lambda: dit(x, sigma, pos))
        two = best(lambda: dit(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([pos, neg])))
        with nag_attention(dit, control), control.guiding(neg):
            nag = best(lambda: dit(x, sigma, pos))
    # Reported, not asserted (timings do not belong in tests): tiny model, 256x256, CPU.
    print(f"forward: plain {one * 1e3:.1f} ms, CFG batch of 2 {two * 1e3:.1f} ms, NAG {nag * 1e3:.1f} ms")


@pytest.mark.parametrize("kind", ["cfg-zero-star", "apg", "rescale-cfg"])
def test_variants_run_end_to_end(pipe, kind) -> None:
    base = Recipe("1girl", width=64, height=64, steps=3, cfg=4.0, sampler="euler", seed=3)
    plain = pipe.generate(base).images
    varied = pipe.generate(base.with_(guidance=kind, cfg_zero_init_steps=1)).images
    assert torch.isfinite(varied).all() and not torch.equal(plain, varied)
