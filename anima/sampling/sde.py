"""Samplers written in half-log-SNR time: er_sde, dpmpp_sde, dpmpp_2m_sde.

These follow ComfyUI's flow-model (``CONST``) branches in float32, with ComfyUI's defaults
(eta 1, s_noise 1; er_sde: max_stage 3, the default noise scaler; dpmpp_2m_sde: midpoint solver).
For a flow model alpha = 1 - sigma, so the half-log-SNR is ``lambda = log(alpha / sigma) =
-logit(sigma)`` and its inverse is ``sigma = sigmoid(-lambda)``. That is infinite at sigma = 1, so
ComfyUI first replaces a first sigma >= 1 by ``percent_to_sigma(1e-4)`` (0.99996667 for shift 3); the
model is then called at that sigma on the unchanged start state. Each sampler returns x0 at the final
step to sigma 0.
"""

from __future__ import annotations

import torch

from anima.sampling.noise import NoiseSource
from anima.sampling.ode import Denoise, StepCallback, check_inputs, require_noise
from anima.sampling.schedules import FlowModelSampling

__all__ = ["sample_dpmpp_2m_sde", "sample_dpmpp_sde", "sample_er_sde"]


def offset_first_sigma(sigmas: torch.Tensor, model_sampling: FlowModelSampling) -> torch.Tensor:
    """A copy of ``sigmas`` whose first entry, if >= 1, is moved to ``percent_to_sigma(1e-4)``."""
    if len(sigmas) <= 1 or not sigmas[0] >= 1:
        return sigmas
    sigmas = sigmas.clone()
    sigmas[0] = model_sampling.percent_to_sigma(1e-4)
    return sigmas


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log((1 - sigma) / sigma)."""
    return sigma.logit().neg()


def sigma_from_half_log_snr(lam: torch.Tensor) -> torch.Tensor:
    return lam.neg().sigmoid()


def _ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    # k-diffusion's get_ancestral_step; Python's min keeps sigma_to when the other side is NaN.
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _er_noise_scaler(x: torch.Tensor) -> torch.Tensor:
    return x * ((x**0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """ER-SDE-Solver-3 (arXiv:2309.06169), VP form with er_lambda = sigma / alpha.

    Higher-order terms use the previous x0 predictions; their integrals of 1 / noise_scaler are
    approximated by a 200-point Riemann sum, as ComfyUI does.
    """
    check_inputs(x, sigmas)
    stages = 3
    n_points = 200.0
    points = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    s_in = x.new_ones([x.shape[0]])

    sigmas = offset_first_sigma(sigmas, model_sampling)
    er_lambdas = half_log_snr(sigmas).neg().exp()  # sigma / alpha

    old_denoised = None
    old_denoised_d = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        if callback is not None:
            callback(i, x, denoised, sigmas[i])
        stage = min(stages, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigmas[i] / lam_s
            alpha_t = sigmas[i + 1] / lam_t
            r_alpha = alpha_t / alpha_s
            r = _er_noise_scaler(lam_t) / _er_noise_scaler(lam_s)

            x = r_alpha * r * x + alpha_t * (1 - r) * denoised  # stage 1 (Euler)

            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / n_points
                lam_pos = lam_t + points * step
                scaled_pos = _er_noise_scaler(lam_pos)

                s = torch.sum(1 / scaled_pos) * step
                denoised_d = (denoised - old_denoised) / (lam_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * _er_noise_scaler(lam_t)) * denoised_d

                if stage >= 3:
                    s_u = torch.sum((lam_pos - lam_s) / scaled_pos) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt**2) / 2 + s_u * _er_noise_scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d

            eps = require_noise(noise, "er_sde")(sigmas[i], sigmas[i + 1])
            scale = (lam_t**2 - lam_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
            x = x + alpha_t * eps * scale
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++ (stochastic, two evaluations per step, midpoint r = 1/2), Brownian-tree noise."""
    check_inputs(x, sigmas)
    if len(sigmas) <= 1:
        return x
    eta, r = 1.0, 0.5
    fac = 1 / (2 * r)
    s_in = x.new_ones([x.shape[0]])
    sigmas = offset_first_sigma(sigmas, model_sampling)

    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        if callback is not None:
            callback(i, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        source = require_noise(noise, "dpmpp_sde")
        lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = sigma_from_half_log_snr(lambda_s_1)

        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()

        # Step 1: to the midpoint in lambda, with an ancestral split of the noise.
        sd, su = _ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        x_2 = x_2 + alpha_s_1 * source(sigmas[i], sigma_s_1) * su
        denoised_2 = denoise(x_2, sigma_s_1 * s_in)

        # Step 2: the full step with the midpoint-corrected x0.
        sd, su = _ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        x = x + alpha_t * source(sigmas[i], sigmas[i + 1]) * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE, midpoint variant, Brownian-tree noise."""
    check_inputs(x, sigmas)
    if len(sigmas) <= 1:
        return x
    eta = 1.0
    s_in = x.new_ones([x.shape[0]])
    sigmas = offset_first_sigma(sigmas, model_sampling)

    old_denoised = None
    h = h_last = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        if callback is not None:
            callback(i, x, denoised, sigmas[i])
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()

            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)

            eps = require_noise(noise, "dpmpp_2m_sde")(sigmas[i], sigmas[i + 1])
            x = x + eps * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt()
        old_denoised = denoised
        h_last = h
    return x
