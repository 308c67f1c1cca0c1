"""Rectified-flow objective: the same conventions as inference (spec 2.8, 2.9)."""

from __future__ import annotations

import torch

from anima.sampling.schedules import FlowModelSampling
from anima.train.objective import flow_loss, noisy_latent, sample_sigmas, shift_sigma, velocity_target


def test_velocity_target_inverts_to_x0_like_the_sampler() -> None:
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 16, 1, 4, 4, generator=g), torch.randn(3, 16, 1, 4, 4, generator=g)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    xs = noisy_latent(x0, eps, sigma)
    v = velocity_target(x0, eps)
    # The samplers' denoised = x - sigma * v must give back x0.
    assert torch.allclose(xs - sigma.view(-1, 1, 1, 1, 1) * v, x0, atol=1e-6)
    assert torch.equal(noisy_latent(x0, eps, torch.ones(3)), eps)
    assert torch.equal(noisy_latent(x0, eps, torch.zeros(3)), x0)


def test_shift_matches_the_inference_model_sampling() -> None:
    t = torch.linspace(0.001, 1.0, 1000)
    ms = FlowModelSampling(shift=3.0)
    assert torch.allclose(shift_sigma(t, 3.0), ms.sigma(t), atol=1e-6)
    assert torch.allclose(shift_sigma(t, 1.0), t)


def test_sigma_sampling_is_seeded_and_in_range() -> None:
    a = sample_sigmas(4096, shift=3.0, generator=torch.Generator().manual_seed(1))
    b = sample_sigmas(4096, shift=3.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert 0 < a.min() and a.max() < 1
    # shift 3 moves the median of uniform t from 0.5 to 0.75
    assert abs(a.median().item() - 0.75) < 0.03
    ln = sample_sigmas(4096, method="logit_normal", shift=1.0, generator=torch.Generator().manual_seed(2))
    assert abs(ln.median().item() - 0.5) < 0.03
    assert ln.std() < a.std()  # concentrated around the middle


def test_flow_loss_is_zero_for_the_exact_velocity() -> None:
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(2, 16, 1, 2, 2, generator=g), torch.randn(2, 16, 1, 2, 2, generator=g)
    sigma = torch.tensor([0.3, 0.7])
    assert flow_loss(lambda x, s: eps - x0, x0, eps, sigma) == 0
    assert flow_loss(lambda x, s: torch.zeros_like(x), x0, eps, sigma) > 0.5
