"""Samplers: replay of every ComfyUI end-to-end fixture, plus accuracy tests for the rest.

Replay: a fake ``denoise`` returns the recorded CFG-combined x0 of step i; the sampler must hand it the
recorded state of step i and end on the recorded final latent. Samplers without a fixture are checked on
problems with a known answer: a constant x0 (point-mass data), where the exact ODE/SDE solution is
known, and a Gaussian data distribution, where the exact probability-flow solution is known and the
error must shrink at the sampler's order.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import TINY, assert_noise_matches_fixture, load_st, ulps_apart

from anima.errors import AnimaError
from anima.sampling.noise import BrownianTreeNoise, DefaultNoise, initial_noise, make_noise_source
from anima.sampling.samplers import SAMPLERS, discards_penultimate, get_sampler, noise_source_for
from anima.sampling.schedules import FlowModelSampling, get_sigmas

pytestmark = pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde rounds tree ends

_E2E = [c for c in json.loads((TINY / "cases.json").read_text())["cases"] if "sampler" in c]

# Wan 2.1 latent statistics (spec section 4), to normalise the img2img VAE latent.
_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508]
_MEAN += [0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743]
_STD += [3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


def _normalize(latent: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(_STD).view(1, 16, 1, 1, 1)
    return (latent - mean) / std


def test_registry():
    assert set(SAMPLERS) == {
        "euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_sde",
        "er_sde", "res_multistep", "uni_pc", "uni_pc_bh2", "dpmpp_2m_sde_gpu", "dpmpp_sde_gpu",
    }  # fmt: skip
    assert {n for n, s in SAMPLERS.items() if s.discard_penultimate} == {"uni_pc", "uni_pc_bh2"}
    assert {n for n, s in SAMPLERS.items() if s.noise_kind == "default"} == {"euler_ancestral", "er_sde"}
    brownian = {"dpmpp_2m_sde", "dpmpp_sde", "dpmpp_2m_sde_gpu", "dpmpp_sde_gpu"}
    assert {n for n, s in SAMPLERS.items() if s.noise_kind == "brownian"} == brownian
    assert {n for n, s in SAMPLERS.items() if s.evals_per_step == 2} == {"heun", "dpmpp_sde", "dpmpp_sde_gpu"}
    with pytest.raises(AnimaError, match="unknown sampler"):
        get_sampler("ddim_magic")


@pytest.mark.parametrize("case", _E2E, ids=[c["id"] for c in _E2E])
def test_replay_comfyui_run(case):
    rec = load_st(TINY / "e2e" / case["id"] / "outputs.safetensors")
    ms = FlowModelSampling(case["shift"])
    sampler = get_sampler(case["sampler"])
    sigmas = get_sigmas(
        ms, case["scheduler"], case["steps"], case.get("denoise", 1.0), sampler.discard_penultimate
    )
    assert ulps_apart(sigmas, rec["sigmas"]) <= 8  # pow/exp round per ISA (see test_schedules)

    noise = initial_noise(case["seed"], rec["noise"].shape)
    assert_noise_matches_fixture(noise, rec["noise"])  # Box-Muller rounds per ISA (see the helper)
    latent = _normalize(rec["init_latent"]) if "init_latent" in rec else torch.zeros_like(noise)
    x = ms.noise_scaling(sigmas[0], noise, latent)

    seen_x, seen_sigma = [], []

    def denoise(x_in: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        i = len(seen_x)
        seen_x.append(x_in.clone())
        seen_sigma.append(sigma.clone())
        return rec["steps_denoised"][i].clone()

    steps_seen = []
    source = make_noise_source(sampler.noise_kind, x, sigmas, case["seed"])
    out = sampler(
        denoise, x, sigmas, model_sampling=ms, noise=source,
        callback=lambda i, xi, x0, s: steps_seen.append((i, xi, x0, float(s))),
    )  # fmt: skip

    assert len(seen_x) == case["steps"]
    x_err = max((a - b).abs().max().item() for a, b in zip(seen_x, rec["steps_x"], strict=True))
    out_err = (out - rec["latent_normalized"]).abs().max().item()
    assert x_err <= 1e-5, x_err
    assert out_err <= 1e-5, out_err

    expected_sigmas = sigmas[:-1].clone()
    if case["sampler"] == "er_sde":  # the first sigma 1.0 is moved off the logSNR singularity
        expected_sigmas[0] = ms.percent_to_sigma(1e-4)
    batch = noise.shape[0]
    for s, e in zip(seen_sigma, expected_sigmas, strict=True):
        assert s.shape == (batch,) and s.dtype == torch.float32 and torch.equal(s, e.expand(batch))
    assert [i for i, *_ in steps_seen] == list(range(case["steps"]))
    records = zip(steps_seen, rec["steps_x"], rec["steps_denoised"], expected_sigmas, strict=True)
    for (_, xi, x0, s), rx, rd, e in records:
        # The denoised prediction is handed back untouched and the sigmas are ours, so both are exact;
        # the state went through the sampler's float32 arithmetic, whose exp/pow kernels round by ISA.
        assert torch.equal(x0, rd) and s == float(e)
        assert (xi - rx).abs().max() <= 1e-5


def _const_denoiser(c: torch.Tensor):
    return lambda x, sigma: c.expand_as(x).clone()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_state_stays_on_its_device(name):
    """On a GPU the sampling state lives on the GPU while sigmas and noise come from the CPU; a CPU
    tensor mixed into the state's arithmetic crashes there (uni_pc did). The meta device stands in
    for the GPU: it refuses the same mixes, with no GPU needed."""
    sampler = SAMPLERS[name]
    ms = FlowModelSampling()
    sigmas = get_sigmas(ms, "simple", 5, discard_penultimate=sampler.discard_penultimate)
    x = torch.zeros(1, 16, 1, 4, 4, device="meta")
    source = make_noise_source(sampler.noise_kind, x, sigmas, 5)
    out = sampler(lambda x, sigma: x * 0.5, x, sigmas, model_sampling=ms, noise=source)
    assert out.device.type == "meta" and out.shape == x.shape


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_constant_x0_lands_on_x0(name):
    """Point-mass data: the true x0 is known; every sampler must end on it (UniPC at sigma 0.001)."""
    sampler = SAMPLERS[name]
    ms = FlowModelSampling()
    g = torch.Generator().manual_seed(1)
    c, x = torch.randn(2, 16, 1, 4, 4, generator=g), torch.randn(2, 16, 1, 4, 4, generator=g)
    x_before = x.clone()
    sigmas = get_sigmas(ms, "simple", 6, discard_penultimate=sampler.discard_penultimate)
    sigmas_before = sigmas.clone()
    source = make_noise_source(sampler.noise_kind, x, sigmas, 5)
    out = sampler(_const_denoiser(c), x, sigmas, model_sampling=ms, noise=source)
    assert torch.equal(x, x_before) and torch.equal(sigmas, sigmas_before)  # inputs untouched
    if name.startswith("uni_pc"):
        # ComfyUI's UniPC stops at sigma 0.001 and rescales by 1 / (1 - 0.001): the exact ODE solution
        # there is c + 0.001 (x - c) / sigma0. float32 loses ~3% of that tiny residual (VP std at 0.001).
        expected = (c + 0.001 / float(sigmas[0]) * (x - c)) / (1 - 0.001)
        assert (out - expected).abs().max() < 3e-4
        # In float64 the same code is exact.
        c64, x64 = c.double(), x.double()
        out64 = sampler(_const_denoiser(c64), x64, sigmas.double(), model_sampling=ms)
        expected64 = (c64 + 0.001 / float(sigmas[0]) * (x64 - c64)) / (1 - 0.001)
        assert (out64 - expected64).abs().max() < 1e-12
    else:
        # Exact up to float32 rounding: 2e-7, or one ulp of |c| where that is larger (2.4e-7 at
        # |c| >= 2), the last digit depending on the CPU's vector ISA.
        ulp = torch.nextafter(c.abs(), torch.tensor(math.inf)) - c.abs()
        assert ((out - c).abs() <= torch.clamp(ulp, min=2e-7)).all(), (out - c).abs().max()


_SHIFT = 3.0
_MU, _S = 0.3, 0.5  # Gaussian data N(mu, s^2), per element


def _gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact E[x0 | x_sigma] for x0 ~ N(mu, s^2) under x_sigma = (1 - sigma) x0 + sigma eps."""
    s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    k = (1 - s) * _S**2 / ((1 - s) ** 2 * _S**2 + s**2)
    return _MU + k * (x - (1 - s) * _MU)


def _gaussian_marginal(sigma: float) -> tuple[float, float]:
    return (1 - sigma) * _MU, math.sqrt((1 - sigma) ** 2 * _S**2 + sigma**2)


# Observed order on a schedule geometric in sigma from 0.9 to 0.05 (no singular last step), float64.
@pytest.mark.parametrize(
    ("name", "min_order", "max_order", "max_err_64"),
    [
        ("euler", 0.9, 1.1, 0.06),
        ("heun", 1.9, 2.1, 6e-4),
        ("dpmpp_2m", 1.6, 2.4, 2e-4),
        ("res_multistep", 1.6, 2.4, 4e-4),
        ("uni_pc", 2.0, 9.0, 2e-5),
        ("uni_pc_bh2", 2.0, 9.0, 5e-5),
    ],
)
def test_ode_samplers_converge_at_their_order(name, min_order, max_order, max_err_64):
    """The probability-flow ODE keeps the standardised value z: x_sigma = m(sigma) + d(sigma) z."""
    sampler = SAMPLERS[name]
    ms = FlowModelSampling(_SHIFT)
    z = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s0, s1 = 0.9, 0.05
    m0, d0 = _gaussian_marginal(s0)
    m1, d1 = _gaussian_marginal(s1)
    x, exact = m0 + d0 * z, m1 + d1 * z
    errs = []
    for n in (16, 32, 64):
        sigmas = torch.exp(torch.linspace(math.log(s0), math.log(s1), n + 1, dtype=torch.float64))
        errs.append((sampler(_gaussian_denoiser, x, sigmas, model_sampling=ms) - exact).abs().max().item())
    order = math.log2(errs[0] / errs[1]) if name.startswith("uni_pc") else math.log2(errs[1] / errs[2])
    assert min_order <= order <= max_order, (errs, order)
    assert errs[-1] <= max_err_64, errs


@pytest.mark.parametrize(
    ("name", "max_err_30"),
    # The last step into sigma 0 is first order for all of them; UniPC's is longest (discarded sigma).
    [
        ("euler", 0.2),
        ("heun", 0.05),
        ("dpmpp_2m", 0.03),
        ("res_multistep", 0.05),
        ("uni_pc", 0.15),
        ("uni_pc_bh2", 0.15),
    ],
)
def test_ode_samplers_reach_the_data_distribution(name, max_err_30):
    """Full run 1 -> 0 with Anima's default schedule: x0 = mu + s * eps exactly for the exact ODE."""
    sampler = SAMPLERS[name]
    ms = FlowModelSampling(_SHIFT)
    eps = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    exact = _MU + _S * eps
    errs = []
    for steps in (4, 30):
        sigmas = get_sigmas(ms, "simple", steps, discard_penultimate=sampler.discard_penultimate)
        errs.append((sampler(_gaussian_denoiser, eps, sigmas, model_sampling=ms) - exact).abs().max().item())
    assert errs[1] < max_err_30 and errs[1] < errs[0] / 5, errs


@pytest.mark.parametrize("name", sorted(n for n, s in SAMPLERS.items() if s.stochastic))
def test_sde_samplers_keep_the_exact_marginal(name):
    """Point-mass data at c: every step's exact marginal is N((1 - sigma) c, sigma^2) at any step size."""
    sampler = SAMPLERS[name]
    ms = FlowModelSampling()
    g = torch.Generator().manual_seed(3)
    c, eps = torch.randn(1, 50_000, generator=g), torch.randn(1, 50_000, generator=g)
    sigmas = get_sigmas(ms, "simple", 8)[:6]  # stop at sigma 0.64 so the noise is still visible
    source = make_noise_source(sampler.noise_kind, eps, sigmas, 5)
    out = sampler(_const_denoiser(c), eps, sigmas, model_sampling=ms, noise=source)
    sigma_end = float(sigmas[-1])
    z = (out - (1 - sigma_end) * c) / sigma_end
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02, (z.mean(), z.std())


@pytest.mark.parametrize("name", sorted(n for n, s in SAMPLERS.items() if s.stochastic))
def test_sde_samplers_are_seeded(name):
    sampler = SAMPLERS[name]
    ms = FlowModelSampling()
    eps = initial_noise(0, (1, 16, 1, 4, 4))
    sigmas = get_sigmas(ms, "karras", 5)

    def run(seed: int) -> torch.Tensor:
        source = make_noise_source(sampler.noise_kind, eps, sigmas, seed)
        return sampler(_gaussian_denoiser, eps, sigmas, model_sampling=ms, noise=source)

    a = run(10)
    assert torch.equal(a, run(10))
    assert (a - run(11)).abs().max() > 1e-2
    with pytest.raises(AnimaError, match="noise source"):
        sampler(_gaussian_denoiser, eps, sigmas, model_sampling=ms)


@pytest.mark.parametrize(("name", "calls"), [("heun", 2 * 6 - 1), ("dpmpp_sde", 2 * 6 - 1), ("uni_pc", 6)])
def test_model_calls_per_run(name, calls):
    sampler = SAMPLERS[name]
    ms = FlowModelSampling()
    eps = initial_noise(0, (1, 16, 1, 4, 4))
    sigmas = get_sigmas(ms, "simple", 6, discard_penultimate=sampler.discard_penultimate)
    seen = []

    def denoise(x, sigma):
        seen.append(float(sigma[0]))
        return _gaussian_denoiser(x, sigma)

    steps = []
    source = make_noise_source(sampler.noise_kind, eps, sigmas, 0)
    sampler(denoise, eps, sigmas, model_sampling=ms, noise=source, callback=lambda i, *a: steps.append(i))
    assert len(seen) == calls
    assert steps == list(range(6))


def test_uni_pc_needs_two_steps():
    ms = FlowModelSampling()
    with pytest.raises(AnimaError, match="2 steps"):
        SAMPLERS["uni_pc"](_gaussian_denoiser, torch.zeros(1, 4), torch.tensor([1.0, 0.0]), model_sampling=ms)


def test_helpers_for_callers():
    x, sigmas = torch.zeros(1, 4), torch.tensor([1.0, 0.5, 0.0])
    assert discards_penultimate("uni_pc") and not discards_penultimate("euler")
    assert noise_source_for("euler", x, sigmas, 0) is None
    assert torch.equal(
        noise_source_for("er_sde", x, sigmas, 7)(sigmas[0], sigmas[1]), DefaultNoise(x, 7)(1, 0)
    )
    assert isinstance(noise_source_for("dpmpp_2m_sde", x, sigmas, 7), BrownianTreeNoise)
