"""Single-evaluation samplers: euler, euler_ancestral, heun, dpmpp_2m, res_multistep.

Every sampler has the signature of `anima.sampling.samplers.SamplerFn`. They follow k-diffusion / ComfyUI
(``comfy/k_diffusion/sampling.py``) operation by operation in float32, with ComfyUI's defaults and its
flow-model (``CONST``) branches, so that given the same ``denoise`` outputs they produce the same
states to the last bit or so. The flow convention is documented in `anima.sampling.schedules`.

In the flow convention the probability-flow ODE is ``dx/dsigma = (x - x0(x, sigma)) / sigma``, the
same expression as in the variance-exploding convention, so ComfyUI's VE-form solvers (euler, heun,
dpmpp_2m, res_multistep) apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from anima.errors import AnimaError
from anima.sampling.noise import NoiseSource
from anima.sampling.schedules import FlowModelSampling

__all__ = [
    "Denoise",
    "StepCallback",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_res_multistep",
]

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x, sigma) -> x0``: sigma is a float32 tensor of shape [batch]."""

StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``callback(i, x, x0, sigma)``: step index, the state the model saw, its x0 and the sigma."""


def check_inputs(x: torch.Tensor, sigmas: torch.Tensor) -> None:
    if sigmas.ndim != 1:
        raise AnimaError(f"sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise AnimaError(f"x must have a batch dimension, got shape {tuple(x.shape)}")


def require_noise(noise: NoiseSource | None, name: str) -> NoiseSource:
    if noise is None:
        raise AnimaError(f"sampler {name!r} is stochastic and needs a noise source (anima.sampling.noise)")
    return noise


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE derivative dx/dsigma = (x - x0) / sigma."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler steps on the probability-flow ODE."""
    check_inputs(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoise(x, sigma * s_in)
        d = to_d(x, sigma, denoised)
        if callback is not None:
            callback(i, x, denoised, sigma)
        x = x + d * (sigmas[i + 1] - sigma)
    return x


@torch.no_grad()
def sample_euler_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Ancestral Euler for flow models (ComfyUI's ``sample_euler_ancestral_RF``, eta 1, s_noise 1).

    Each step goes deterministically down to ``sigma_down`` and then renoises to ``sigma_next`` so
    that the marginal of the rectified-flow path is kept; the last step returns x0.
    """
    check_inputs(x, sigmas)
    eta = 1.0
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        if callback is not None:
            callback(i, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        downstep_ratio = 1 + (sigmas[i + 1] / sigmas[i] - 1) * eta
        sigma_down = sigmas[i + 1] * downstep_ratio
        alpha_next = 1 - sigmas[i + 1]
        alpha_down = 1 - sigma_down
        renoise = (sigmas[i + 1] ** 2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        eps = require_noise(noise, "euler_ancestral")(sigmas[i], sigmas[i + 1])
        x = (alpha_next / alpha_down) * x + eps * renoise
    return x


@torch.no_grad()
def sample_heun(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Heun's second-order method (two evaluations per step; Euler for the last step to sigma 0)."""
    check_inputs(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = denoise(x, sigma * s_in)
        d = to_d(x, sigma, denoised)
        if callback is not None:
            callback(i, x, denoised, sigma)
        dt = sigmas[i + 1] - sigma
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        denoised_2 = denoise(x_2, sigmas[i + 1] * s_in)
        d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
        x = x + (d + d_2) / 2 * dt
    return x


def _t(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in t = -log(sigma), data prediction."""
    check_inputs(x, sigmas)
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        if callback is not None:
            callback(i, x, denoised, sigmas[i])
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - _t(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_res_multistep(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """RES second-order multistep (arXiv:2308.02157), ComfyUI's deterministic ``res_multistep`` (eta 0).

    With eta 0 ComfyUI's noise term is multiplied by zero, so no noise is drawn here.
    """
    check_inputs(x, sigmas)
    s_in = x.new_ones([x.shape[0]])

    def phi1(t: torch.Tensor) -> torch.Tensor:
        return torch.expm1(t) / t

    def phi2(t: torch.Tensor) -> torch.Tensor:
        return (phi1(t) - 1.0) / t

    old_denoised = None
    old_sigma_down = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        sigma_down = sigmas[i + 1]  # get_ancestral_step with eta 0
        if callback is not None:
            callback(i, x, denoised, sigmas[i])
        if sigma_down == 0 or old_denoised is None:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old = _t(sigmas[i]), _t(old_sigma_down)
            t_next, t_prev = _t(sigma_down), _t(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = phi1(-h), phi2(-h)
            b1 = torch.nan_to_num(phi1_val - phi2_val / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2_val / c2, nan=0.0)
            x = _sigma(h) * x + h * (b1 * denoised + b2 * old_denoised)
        old_denoised = denoised
        old_sigma_down = sigma_down
    return x
