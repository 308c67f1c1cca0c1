"""The rectified-flow objective Anima was trained with (anima-spec §2.8) and its timestep sampling.

    x_sigma = (1 - sigma) x0 + sigma eps,   target v = eps - x0,   loss = mean((v_pred - v)^2)

The DiT receives the raw sigma in [0, 1] (not x1000), exactly as at inference, where
x0 = x_sigma - sigma v. Timesteps: t ~ U(0, 1) or logit-normal (t = sigmoid(m + s n)), then the
same shift as the sampler's schedule, sigma = shift t / (1 + (shift - 1) t); shift > 1 spends more
of the training on high noise, which is where composition is decided.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from anima.sampling.schedules import add_noise, shift_sigma


def sample_sigmas(
    n: int,
    *,
    method: str = "uniform",
    shift: float = 3.0,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[n] float32 sigmas in (0, 1)."""
    if method == "uniform":
        t = torch.rand(n, generator=generator)
    elif method == "logit_normal":
        t = torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator))
    else:
        raise ValueError(f"unknown timestep sampling {method!r}")
    return shift_sigma(t, shift)


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps, sigma [B] broadcast over the latent dims."""
    return add_noise(x0, noise, sigma)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_loss(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
) -> torch.Tensor:
    """Mean squared velocity error; `model(x_sigma, sigma) -> v`. Computed in fp32."""
    v = model(noisy_latent(x0, noise, sigma), sigma)
    return F.mse_loss(v.float(), velocity_target(x0, noise).float())
