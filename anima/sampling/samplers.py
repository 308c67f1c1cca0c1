"""The sampler registry: ComfyUI's sampler names, one signature, and what each sampler needs.

Every sampler is called as::

    x0 = sampler(denoise, x, sigmas, model_sampling=ms, noise=source, callback=cb)

- ``denoise(x, sigma) -> x0`` hides the model, CFG and conditioning (sigma: float32 [batch]);
- ``x`` is the start state ``sigma0 * noise + (1 - sigma0) * latent`` (see `FlowModelSampling.noise_scaling`);
- ``sigmas`` comes from `anima.sampling.schedules.get_sigmas` (``discard_penultimate``: the sampler's flag);
- ``noise`` is the per-step noise source the sampler's ``noise_kind`` asks for
  (`anima.sampling.noise.make_noise_source`), None for deterministic samplers;
- ``callback(i, x, x0, sigma)`` is called once per step with the state the model saw at the step's
  first evaluation, for progress bars and previews.

The flow-matching conventions are documented in `anima.sampling.schedules`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from anima.errors import AnimaError
from anima.sampling.noise import NoiseKind, NoiseSource, make_noise_source
from anima.sampling.ode import (
    Denoise,
    StepCallback,
    sample_dpmpp_2m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_res_multistep,
)
from anima.sampling.schedules import FlowModelSampling
from anima.sampling.sde import sample_dpmpp_2m_sde, sample_dpmpp_sde, sample_er_sde
from anima.sampling.unipc import sample_uni_pc, sample_uni_pc_bh2

__all__ = [
    "SAMPLERS",
    "Denoise",
    "Sampler",
    "SamplerFn",
    "StepCallback",
    "discards_penultimate",
    "get_sampler",
    "noise_source_for",
]


class SamplerFn(Protocol):
    def __call__(
        self,
        denoise: Denoise,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        model_sampling: FlowModelSampling,
        noise: NoiseSource | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class Sampler:
    """A sampler and the facts a caller needs to drive it like ComfyUI's KSampler does."""

    name: str
    fn: SamplerFn
    noise_kind: NoiseKind
    """'none' (deterministic), 'default' (seed + 1 CPU generator) or 'brownian' (Brownian tree)."""
    discard_penultimate: bool
    """ComfyUI computes one step more and drops the second-to-last sigma for this sampler."""
    evals_per_step: int
    """Model calls per step (the last step to sigma 0 may need fewer)."""

    @property
    def stochastic(self) -> bool:
        return self.noise_kind != "none"

    def __call__(
        self,
        denoise: Denoise,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        model_sampling: FlowModelSampling,
        noise: NoiseSource | None = None,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        return self.fn(denoise, x, sigmas, model_sampling=model_sampling, noise=noise, callback=callback)


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("euler", sample_euler, "none", False, 1),
        Sampler("euler_ancestral", sample_euler_ancestral, "default", False, 1),
        Sampler("heun", sample_heun, "none", False, 2),
        Sampler("dpmpp_2m", sample_dpmpp_2m, "none", False, 1),
        Sampler("dpmpp_2m_sde", sample_dpmpp_2m_sde, "brownian", False, 1),
        Sampler("dpmpp_sde", sample_dpmpp_sde, "brownian", False, 2),
        # ComfyUI's "_gpu" variants only grow the Brownian tree on the state's device; for a CPU run
        # they are the same computation, and that CPU stream is what we reproduce on any device.
        Sampler("dpmpp_2m_sde_gpu", sample_dpmpp_2m_sde, "brownian", False, 1),
        Sampler("dpmpp_sde_gpu", sample_dpmpp_sde, "brownian", False, 2),
        Sampler("er_sde", sample_er_sde, "default", False, 1),
        Sampler("res_multistep", sample_res_multistep, "none", False, 1),
        Sampler("uni_pc", sample_uni_pc, "none", True, 1),
        Sampler("uni_pc_bh2", sample_uni_pc_bh2, "none", True, 1),
    )
}


def get_sampler(name: str) -> Sampler:
    sampler = SAMPLERS.get(name)
    if sampler is None:
        raise AnimaError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler


def discards_penultimate(name: str) -> bool:
    """Whether ComfyUI builds this sampler's schedule with one step more, dropping the penultimate sigma."""
    return get_sampler(name).discard_penultimate


def noise_source_for(name: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSource | None:
    """The per-step noise source sampler ``name`` needs for this run (None if it is deterministic)."""
    return make_noise_source(get_sampler(name).noise_kind, x, sigmas, seed)
