"""Flow-matching model sampling and the noise schedules (sigma lists) ComfyUI offers.

Conventions (the one place they are written down; `tests/test_schedules.py` pins them):

- Time runs from sigma = 1 (pure noise) down to sigma = 0 (data).
- The noisy latent is ``x_sigma = (1 - sigma) * x0 + sigma * eps`` (rectified flow, ComfyUI's ``CONST``).
- The DiT receives the raw sigma in [0, 1] (``timestep(sigma) = sigma * multiplier`` with multiplier 1)
  and predicts the velocity ``v = eps - x0``; hence ``x0 = x_sigma - sigma * v``. The samplers only ever
  see x0 through a caller-supplied ``denoise(x, sigma) -> x0`` function.
- Shift: ``sigma(t) = s t / (1 + (s - 1) t)`` with s = 3 for Anima. The model's sigma table holds
  ``sigma(i / 1000)`` for i = 1..1000 in float32; ``sigma_min`` is its first entry, ``sigma_max`` its last.
- A schedule is a float32 tensor of decreasing sigmas ending in 0 (one more entry than steps, except
  where ComfyUI's own scheduler returns another length, e.g. ``ddim_uniform``).

Every scheduler reproduces ComfyUI's float32 arithmetic operation by operation, so the sigma arrays are
bit-identical to ComfyUI's (checked against the fixture arrays). ComfyUI's ``beta`` scheduler calls
``scipy.stats.beta.ppf``; here the inverse regularised incomplete beta is computed in float64 by a
continued fraction and bisection, so scipy is not a runtime dependency.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from anima.errors import AnimaError

__all__ = [
    "FlowModelSampling",
    "SCHEDULERS",
    "SchedulerFn",
    "beta_ppf",
    "get_sigmas",
]


def shift_sigma(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The shift convention, written once: sigma(t) = shift t / (1 + (shift - 1) t) (ComfyUI's
    ModelSamplingDiscreteFlow, multiplier 1), in ComfyUI's float32 operation order."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


class FlowModelSampling:
    """Discrete flow model sampling (ComfyUI ``ModelSamplingDiscreteFlow`` + ``CONST``).

    ``sigmas`` is the float32 table ``sigma(i / timesteps)``, i = 1..timesteps.
    """

    def __init__(self, shift: float = 3.0, multiplier: float = 1.0, timesteps: int = 1000) -> None:
        if not shift > 0:
            raise AnimaError(f"shift must be positive, got {shift}")
        if not multiplier > 0:
            raise AnimaError(f"multiplier must be positive, got {multiplier}")
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        # int64 arange / int -> float32, as ComfyUI builds the table.
        t = (torch.arange(1, timesteps + 1, 1) / timesteps) * self.multiplier
        self.sigmas: torch.Tensor = self.sigma(t)

    def __repr__(self) -> str:
        return f"FlowModelSampling(shift={self.shift}, multiplier={self.multiplier})"

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's time input for ``sigma`` (sigma itself for Anima)."""
        return sigma * self.multiplier

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Inverse of `timestep`, with the shift applied."""
        return shift_sigma(timestep / self.multiplier, self.shift)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the sampling run (0 = start, sigma 1; 1 = end, sigma 0), in float64."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        t = 1.0 - percent
        if self.shift == 1.0:
            return t
        return self.shift * t / (1 + (self.shift - 1) * t)

    @staticmethod
    def noise_scaling(sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Sampler start state ``sigma * noise + (1 - sigma) * latent`` (``latent`` in model space)."""
        return add_noise(latent, noise, sigma)

    @staticmethod
    def inverse_noise_scaling(sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """ComfyUI divides the sampler output by ``1 - sigma_last`` (a no-op when the schedule ends at 0)."""
        sigma = _reshape_sigma(sigma, latent.ndim)
        return latent / (1.0 - sigma)


def add_noise(latent: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The flow-matching noising convention, the one place it is written (anima-spec §2.9):
    ``x_sigma = sigma * noise + (1 - sigma) * latent``.

    `sigma` is a number, a scalar tensor or one value per batch row; it is cast to the latent's
    dtype first (a bf16 training step noises in bf16), then broadcast over the latent's dims."""
    s = torch.as_tensor(sigma, device=latent.device).to(latent.dtype)
    s = s.reshape(()) if s.numel() == 1 else s.reshape(s.shape[:1] + (1,) * (latent.ndim - 1))
    return s * noise + (1.0 - s) * latent


def _reshape_sigma(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    if sigma.numel() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


SchedulerFn = Callable[[FlowModelSampling, int], torch.Tensor]


# --- schedulers: (model_sampling, steps) -> float32 sigmas ------------------------------------------


def simple(ms: FlowModelSampling, steps: int) -> torch.Tensor:
    """Evenly spaced entries of the sigma table, from the top, then 0."""
    stride = len(ms.sigmas) / steps
    sigs = [float(ms.sigmas[-(1 + int(x * stride))]) for x in range(steps)]
    return torch.tensor([*sigs, 0.0], dtype=torch.float32)


def _normal(ms: FlowModelSampling, steps: int, sgm: bool) -> torch.Tensor:
    # Uniform in model time; for a flow model that is uniform in sigma and then shifted once more,
    # which is what ComfyUI does.
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.tensor(sigs, dtype=torch.float32)


def normal(ms: FlowModelSampling, steps: int) -> torch.Tensor:
    return _normal(ms, steps, sgm=False)


def sgm_uniform(ms: FlowModelSampling, steps: int) -> torch.Tensor:
    return _normal(ms, steps, sgm=True)


def karras(ms: FlowModelSampling, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): uniform in sigma^(1/rho) between sigma_max and sigma_min, then 0."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def exponential(ms: FlowModelSampling, steps: int) -> torch.Tensor:
    """Uniform in log sigma between sigma_max and sigma_min, then 0."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp()
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def ddim_uniform(ms: FlowModelSampling, steps: int) -> torch.Tensor:
    """Every k-th table entry from the bottom, reversed, then 0 (ComfyUI's length quirks included)."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += stride
    return torch.tensor(sigs[::-1], dtype=torch.float32)


def beta(ms: FlowModelSampling, steps: int, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Beta-distributed table indices (arXiv:2407.12173), repeated indices dropped, then 0."""
    total = len(ms.sigmas) - 1
    step = 1.0 / steps  # numpy.linspace(0, 1, steps, endpoint=False) = i * (1 / steps)
    sigs: list[float] = []
    last_t = -1.0
    for i in range(steps):
        q = 1.0 - i * step
        t = float(round(beta_ppf(q, alpha, beta_) * total))  # round() = numpy.rint (half to even)
        if t != last_t:
            sigs.append(float(ms.sigmas[int(t)]))
        last_t = t
    return torch.tensor([*sigs, 0.0], dtype=torch.float32)


def linear_quadratic(
    ms: FlowModelSampling, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> torch.Tensor:
    """Mochi's schedule: linear to ``threshold_noise`` for half the steps, then quadratic."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in [*linear, *quadratic, 1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * ms.sigma_max


def kl_optimal(ms: FlowModelSampling, steps: int) -> torch.Tensor:
    """Uniform in arctan(sigma) between sigma_max and sigma_min, then 0."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    # ComfyUI divides by steps - 1 and yields NaN for one step; one step here is just [sigma_max, 0].
    adj = torch.arange(steps, dtype=torch.float32).div_(max(steps - 1, 1))
    sigmas = adj.new_zeros(steps + 1)
    sigmas[:-1] = (adj * math.atan(sigma_min) + (1 - adj) * math.atan(sigma_max)).tan_()
    return sigmas


SCHEDULERS: dict[str, SchedulerFn] = {
    "simple": simple,
    "sgm_uniform": sgm_uniform,
    "karras": karras,
    "exponential": exponential,
    "ddim_uniform": ddim_uniform,
    "beta": beta,
    "normal": normal,
    "linear_quadratic": linear_quadratic,
    "kl_optimal": kl_optimal,
}


def get_sigmas(
    model_sampling: FlowModelSampling,
    scheduler: str,
    steps: int,
    denoise: float = 1.0,
    discard_penultimate: bool = False,
) -> torch.Tensor:
    """The schedule a ComfyUI KSampler would use.

    ``denoise < 1`` (img2img) runs the scheduler for ``int(steps / denoise)`` steps and keeps the last
    ``steps + 1`` sigmas. ``discard_penultimate`` (samplers flagged in `anima.sampling.samplers`) computes one
    step more and drops the second-to-last sigma.
    """
    fn = SCHEDULERS.get(scheduler)
    if fn is None:
        raise AnimaError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise AnimaError(f"steps must be a positive integer, got {steps!r}")

    steps = int(steps)

    def calculate(n: int) -> torch.Tensor:
        if discard_penultimate:
            sigmas = fn(model_sampling, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return fn(model_sampling, n)

    if denoise is None or denoise > 0.9999:
        return calculate(steps)
    if denoise <= 0.0:
        return torch.zeros(0, dtype=torch.float32)
    return calculate(int(steps / denoise))[-(steps + 1) :]


# --- inverse CDF of the beta distribution (float64, no scipy) --------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast only below the mean; use the symmetry above it.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Inverse CDF of Beta(a, b) at q, to float64 precision (bisection on `_betainc`)."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    if a == b and q == 0.5:
        # The median of a symmetric beta is exactly 1/2; bisection would land an ulp to either side,
        # and ComfyUI's rint(0.5 * 999) = 500 depends on it.
        return 0.5
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
