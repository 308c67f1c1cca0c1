"""UniPC (arXiv:2302.04867) as ComfyUI runs it: ``uni_pc`` (B(h) = h, "bh1") and ``uni_pc_bh2``.

ComfyUI's UniPC works in a variance-preserving frame built from the sigma schedule:
``alpha = 1 / sqrt(1 + sigma^2)``, ``std = sigma * alpha``, ``lambda = log(alpha / std) = -log(sigma)``,
with the state ``x_vp = x * alpha``; the model's x0 is reached through an eps prediction at
``x = x_vp / alpha``. This is only a change of variables of the same ODE
``dx/dsigma = (x - x0) / sigma`` that the flow model defines, so it applies to flow models unchanged.

Quirks reproduced on purpose (ComfyUI behaviour for a schedule ending at 0):
- the final sigma 0 is replaced by 0.001, the solver stops there without a last model call, and the
  result is ``x_vp / alpha(0.001)``;
- ComfyUI writes that 0.001 into the caller's sigma tensor, so its final ``inverse_noise_scaling``
  divides the result by ``1 - 0.001``. We do not touch the caller's tensor; the division is done here.

The multistep order is ``min(3, steps - 1)`` with lower orders for the first and last steps; each step
costs one model call. The schedule should come from `anima.sampling.schedules.get_sigmas` with
``discard_penultimate=True`` (ComfyUI does that for both UniPC variants).
"""

from __future__ import annotations

import torch

from anima.errors import AnimaError
from anima.sampling.noise import NoiseSource
from anima.sampling.ode import Denoise, StepCallback, check_inputs
from anima.sampling.schedules import FlowModelSampling

__all__ = ["sample_uni_pc", "sample_uni_pc_bh2"]

_T_END = 0.001


def _log_mean_coeff(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_mean_coeff(sigma))


def _std(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_mean_coeff(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_mean_coeff = _log_mean_coeff(sigma)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
    return log_mean_coeff - log_std


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient [B] as [B, 1, ...] on the state's device. The coefficients are computed
    from the schedule on the CPU (the same numbers whatever device the state lives on)."""
    return v[(...,) + (None,) * (like.ndim - 1)].to(like.device)


class _UniPC:
    def __init__(self, denoise: Denoise, variant: str, callback: StepCallback | None) -> None:
        self.denoise = denoise
        self.variant = variant
        self.callback = callback
        self.calls = 0

    def data_prediction(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 from the VP state: eps at the unscaled state, then x0 = (x - std eps) / alpha."""
        sigma = _expand(t, x)
        x_in = x * ((sigma**2 + 1.0) ** 0.5)
        denoised = self.denoise(x_in, t)
        if self.callback is not None:
            self.callback(self.calls, x_in, denoised, t[0])
        self.calls += 1
        eps = (x_in - denoised) / sigma
        return (x - _expand(_std(t), x) * eps) / _expand(_alpha(t), x)

    def update(
        self,
        x: torch.Tensor,
        model_prev: list[torch.Tensor],
        t_prev: list[torch.Tensor],
        t: torch.Tensor,
        order: int,
        use_corrector: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One multistep UniPC-B(h) step (predictor, then corrector with a model call at the new point)."""
        t_prev_0 = t_prev[-1]
        lambda_prev_0 = _lambda(t_prev_0)
        lambda_t = _lambda(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
        alpha_t = torch.exp(_log_mean_coeff(t))
        h = lambda_t - lambda_prev_0

        rks: list[torch.Tensor] = []
        d1s: list[torch.Tensor] = []
        for i in range(1, order):
            rk = ((_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks.append(torch.ones((), dtype=h.dtype, device=h.device))
        rk_vec = torch.stack(rks)

        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        # The b recurrence cancels badly for small h; ComfyUI evaluates it in float64 on the CPU.
        hh64 = hh.detach().cpu().double()
        h_phi_k = torch.expm1(hh64) / hh64 - 1
        b_h64 = hh64 if self.variant == "bh1" else torch.expm1(hh64)
        factorial = 1
        rows: list[torch.Tensor] = []
        b_list: list[torch.Tensor] = []
        for i in range(1, order + 1):
            rows.append(torch.pow(rk_vec, i - 1))
            b_list.append(h_phi_k * factorial / b_h64)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh64 - 1 / factorial
        r_mat = torch.stack(rows)
        b = torch.stack(b_list).to(dtype=hh.dtype)

        d1_stack = torch.stack(d1s, dim=1) if d1s else None
        rhos_p = None
        if d1_stack is not None:
            if order == 2:
                rhos_p = torch.tensor([0.5], device=b.device, dtype=b.dtype)
            else:
                rhos_p = torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
        rhos_c = None
        if use_corrector:
            rhos_c = (
                torch.tensor([0.5], device=b.device, dtype=b.dtype)
                if order == 1
                else torch.linalg.solve(r_mat, b)
            )

        x_t_ = _expand(sigma_t / sigma_prev_0, x) * x - _expand(alpha_t * h_phi_1, x) * model_prev_0
        if d1_stack is not None:
            pred_res = torch.tensordot(d1_stack, rhos_p.to(x.device), dims=([1], [0]))
            x_t = x_t_ - _expand(alpha_t * b_h, x) * pred_res
        else:
            x_t = x_t_ - _expand(alpha_t * b_h, x) * 0

        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            if d1_stack is not None:
                corr_res = torch.tensordot(d1_stack, rhos_c[:-1].to(x.device), dims=([1], [0]))
            else:
                corr_res = 0
            d1_t = model_t - model_prev_0
            x_t = x_t_ - _expand(alpha_t * b_h, x) * (corr_res + rhos_c[-1].to(x.device) * d1_t)
        return x_t, model_t

    def sample(self, x: torch.Tensor, timesteps: torch.Tensor, order: int) -> torch.Tensor:
        steps = len(timesteps) - 1
        batch = x.shape[0]
        model_prev: list[torch.Tensor] = []
        t_prev: list[torch.Tensor] = []
        for step_index in range(steps):
            if step_index == 0:
                vec_t = timesteps[0].expand(batch)
                model_prev = [self.data_prediction(x, vec_t)]
                t_prev = [vec_t]
            elif step_index < order:
                # Warm-up: the first steps use the orders available so far.
                vec_t = timesteps[step_index].expand(batch)
                x, model_x = self.update(x, model_prev, t_prev, vec_t, step_index, use_corrector=True)
                if model_x is None:
                    model_x = self.data_prediction(x, vec_t)
                model_prev.append(model_x)
                t_prev.append(vec_t)
            else:
                last = step_index + (2 if step_index == steps - 1 else 1)
                for step in range(step_index, last):
                    vec_t = timesteps[step].expand(batch)
                    step_order = min(order, steps + 1 - step)
                    x, model_x = self.update(x, model_prev, t_prev, vec_t, step_order, step != steps)
                    for i in range(order - 1):
                        t_prev[i] = t_prev[i + 1]
                        model_prev[i] = model_prev[i + 1]
                    t_prev[-1] = vec_t
                    if step < steps:
                        if model_x is None:
                            model_x = self.data_prediction(x, vec_t)
                        model_prev[-1] = model_x
        return x


def _sample_unipc(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    variant: str,
    callback: StepCallback | None,
) -> torch.Tensor:
    check_inputs(x, sigmas)
    if len(sigmas) < 3:
        # ComfyUI's order is min(3, steps - 1); with one step it would return the (rescaled) noise.
        raise AnimaError("uni_pc needs at least 2 steps")
    timesteps = sigmas.clone()
    ends_at_zero = bool(sigmas[-1] == 0)
    if ends_at_zero:
        timesteps[-1] = _T_END
    order = min(3, len(timesteps) - 2)
    x_vp = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    out = _UniPC(denoise, variant, callback).sample(x_vp, timesteps, order)
    out = out / _alpha(timesteps[-1])
    if ends_at_zero:
        out = out / (1.0 - timesteps[-1])
    return out


@torch.no_grad()
def sample_uni_pc(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """UniPC with B(h) = h (ComfyUI ``uni_pc``)."""
    return _sample_unipc(denoise, x, sigmas, "bh1", callback)


@torch.no_grad()
def sample_uni_pc_bh2(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    model_sampling: FlowModelSampling,
    noise: NoiseSource | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1 (ComfyUI ``uni_pc_bh2``)."""
    return _sample_unipc(denoise, x, sigmas, "bh2", callback)
