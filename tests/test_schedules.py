"""Model sampling (shift, sigma table, conventions) and every ComfyUI scheduler against the fixtures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
from conftest import TINY, ulps_apart

from anima.errors import AnimaError
from anima.sampling.schedules import SCHEDULERS, FlowModelSampling, beta_ppf, get_sigmas


def _schedules_case() -> dict:
    cases = json.loads((TINY / "cases.json").read_text())["cases"]
    return next(c for c in cases if c["id"] == "component_schedules")


_CASE = _schedules_case()
_ARRAYS = [s for s in _CASE["schedules"] if "sigmas" in s]
_FACTS = next(s for s in _CASE["schedules"] if "er_sde_first_sigma_offset" in s)


def test_fixture_lists_every_scheduler_we_offer():
    assert {s["scheduler"] for s in _ARRAYS} == set(SCHEDULERS)


@pytest.mark.parametrize(
    "entry",
    _ARRAYS,
    ids=[f"{s['scheduler']}-{s['steps']}-d{s['denoise']}-{s['sampler_class'][:7]}" for s in _ARRAYS],
)
def test_schedule_matches_comfyui_to_the_ulp(entry):
    ms = FlowModelSampling(entry["shift"])
    discard = entry["sampler_class"] != "default"
    got = get_sigmas(ms, entry["scheduler"], entry["steps"], entry["denoise"], discard)
    expected = torch.tensor(entry["sigmas"], dtype=torch.float32)
    assert got.dtype == torch.float32
    assert got.shape == expected.shape
    # Not bit for bit: karras, exponential and kl_optimal go through torch's vectorised pow/exp/log,
    # which round differently per vector ISA (measured against the fixture: 1 ulp on AVX2 and on
    # AVX-512, up to 7 ulps with torch's scalar fallback). The pure table lookups (simple,
    # ddim_uniform, beta) involve no such kernel and stay exact.
    assert ulps_apart(got, expected) <= 8, (got - expected).abs().max()
    if entry["scheduler"] in ("simple", "ddim_uniform", "beta"):
        assert torch.equal(got, expected)


def test_sigma_table_is_shifted_grid_in_float32():
    ms = FlowModelSampling(3.0, 1.0)
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.shape == (1000,)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    exact = 3 * t / (1 + 2 * t)
    assert torch.allclose(ms.sigmas.double(), exact, rtol=2e-7, atol=0)
    assert float(ms.sigma_min) == _FACTS["model_sampling_sigma_min"]
    assert float(ms.sigma_max) == _FACTS["model_sampling_sigma_max"] == 1.0
    # shift 1 is the plain grid; timestep() is sigma itself (multiplier 1).
    assert torch.equal(FlowModelSampling(1.0).sigmas, torch.arange(1, 1001) / 1000)
    assert torch.equal(ms.timestep(ms.sigmas), ms.sigmas)
    assert torch.equal(ms.sigma(ms.timestep(torch.tensor(0.5))), torch.tensor(0.75))


def test_percent_to_sigma():
    ms = FlowModelSampling()
    assert ms.percent_to_sigma(0.0) == 1.0
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == 0.75
    assert ms.percent_to_sigma(1e-4) == _FACTS["er_sde_first_sigma_offset"]


def test_flow_convention():
    """x_sigma = (1 - sigma) x0 + sigma eps, v = eps - x0, x0 = x_sigma - sigma v."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 16, 1, 4, 4, generator=g), torch.randn(2, 16, 1, 4, 4, generator=g)
    ms = FlowModelSampling()
    for s in (1.0, 0.75, 0.2):
        sigma = torch.tensor(s)
        x = ms.noise_scaling(sigma, eps, x0)
        assert torch.allclose(x, (1 - s) * x0 + s * eps, atol=1e-6)
        v = eps - x0
        assert torch.allclose(x - sigma * v, x0, atol=1e-5)
    # Full denoise starts from pure noise; ending at sigma 0 the output is left as it is.
    assert torch.equal(ms.noise_scaling(torch.tensor(1.0), eps, x0), eps)
    assert torch.equal(ms.inverse_noise_scaling(torch.tensor(0.0), x0), x0)


def test_img2img_truncation_and_discard_penultimate():
    ms = FlowModelSampling()
    assert torch.equal(get_sigmas(ms, "simple", 6, 0.6), get_sigmas(ms, "simple", 10)[-7:])
    full = get_sigmas(ms, "karras", 8)
    assert torch.equal(
        get_sigmas(ms, "karras", 7, discard_penultimate=True), torch.cat([full[:-2], full[-1:]])
    )
    assert torch.equal(get_sigmas(ms, "simple", 6, 0.99995), get_sigmas(ms, "simple", 6))
    assert get_sigmas(ms, "simple", 6, 0.0).numel() == 0


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_every_schedule_decreases_to_zero(name, steps):
    sigmas = get_sigmas(FlowModelSampling(), name, steps)
    assert sigmas.dtype == torch.float32
    assert torch.isfinite(sigmas).all()
    assert sigmas[-1] == 0 and sigmas[0] <= 1.0
    assert (sigmas[1:] <= sigmas[:-1]).all()
    # ddim_uniform and beta may differ in length (ComfyUI's own quirks); the rest are steps + 1 long.
    if name not in ("ddim_uniform", "beta"):
        assert len(sigmas) == steps + 1


def test_bad_arguments():
    ms = FlowModelSampling()
    with pytest.raises(AnimaError, match="unknown scheduler"):
        get_sigmas(ms, "bogus", 4)
    for steps in (0, -1, 2.5, True):
        with pytest.raises(AnimaError, match="steps"):
            get_sigmas(ms, "simple", steps)
    with pytest.raises(AnimaError):
        FlowModelSampling(shift=0)


def test_beta_ppf_matches_scipy():
    qs = [1e-9, 1e-4, 0.01, 0.1, 0.25, 1 / 3, 0.5, 0.6, 0.9, 0.999, 1 - 1e-9]
    for q in qs:  # ComfyUI's parameters, over the whole range
        assert math.isclose(
            beta_ppf(q, 0.6, 0.6), scipy.stats.beta.ppf(q, 0.6, 0.6), rel_tol=1e-12, abs_tol=1e-14
        )
    for a, b in [(0.5, 2.0), (2.0, 0.7), (1.0, 1.0)]:  # other shapes, away from ill-conditioned tails
        for q in qs[1:-1]:
            assert math.isclose(
                beta_ppf(q, a, b), scipy.stats.beta.ppf(q, a, b), rel_tol=1e-10, abs_tol=1e-14
            )
    assert beta_ppf(0.0, 0.6, 0.6) == 0.0 and beta_ppf(1.0, 0.6, 0.6) == 1.0


def test_beta_schedule_indices_match_scipy():
    # ComfyUI: rint(scipy.stats.beta.ppf(1 - linspace(0, 1, n, endpoint=False), 0.6, 0.6) * 999).
    ms = FlowModelSampling()
    for steps in list(range(1, 41)) + [64, 100]:
        qs = 1 - np.linspace(0, 1, steps, endpoint=False)
        idx = np.rint(scipy.stats.beta.ppf(qs, 0.6, 0.6) * 999).astype(int)
        keep = [int(i) for k, i in enumerate(idx) if k == 0 or i != idx[k - 1]]
        expected = torch.tensor([*(float(ms.sigmas[i]) for i in keep), 0.0], dtype=torch.float32)
        assert torch.equal(get_sigmas(ms, "beta", steps), expected), steps
