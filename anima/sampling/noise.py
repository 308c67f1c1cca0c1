"""Seeded noise exactly as ComfyUI draws it on the CPU, without touching torch's global generator.

- `initial_noise(seed, shape)`: ComfyUI's ``prepare_noise`` seeds the global CPU Mersenne Twister with
  ``torch.manual_seed(seed)`` and makes one float32 ``randn`` of the whole latent batch. A private
  ``torch.Generator('cpu')`` seeded the same way yields the identical stream (tested), so we use that.
  Seeds are 64-bit; the Mersenne Twister only sees their low 32 bits.
- Per-step noise for the stochastic samplers is a *noise source*: ``noise(sigma, sigma_next) -> Tensor``
  shaped like the sampler state.
  - `DefaultNoise`: ComfyUI's ``default_noise_sampler`` on the CPU: a separate generator seeded with
    ``seed + 1``, one float32 ``randn`` per call (only steps that add noise call it).
  - `BrownianTreeNoise`: ComfyUI's ``BrownianTreeNoiseSampler`` with the tree on the CPU:
    ``torchsde.BrownianTree(sigma_min, zeros, sigma_max, entropy=seed)`` (seed not incremented) queried
    at the two sigmas and normalised, ``(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)``.
  Draws always happen on the CPU in float32 and are then moved to the state's device and dtype, so a
  GPU run reproduces a CPU run. (ComfyUI on a GPU would use a CUDA generator instead; that stream
  cannot be reproduced on a CPU.)
- `make_noise_source(kind, x, sigmas, seed)` builds the source a sampler asks for by its metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import torch

from anima.errors import AnimaError

__all__ = [
    "BrownianTreeNoise",
    "DefaultNoise",
    "NoiseKind",
    "NoiseSource",
    "initial_noise",
    "make_noise_source",
]

_U64 = 0xFFFF_FFFF_FFFF_FFFF

NoiseKind = Literal["none", "default", "brownian"]


class NoiseSource(Protocol):
    """Per-step noise: a standard-normal tensor shaped like the sampler state."""

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor: ...


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _U64:
        raise AnimaError(f"seed must be an integer in [0, 2**64 - 1], got {seed!r}")
    return seed


def _cpu_generator(seed: int) -> torch.Generator:
    # Generator.manual_seed(s) puts the CPU generator in the same state as torch.manual_seed(s).
    return torch.Generator(device="cpu").manual_seed(seed)


def initial_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """The initial latent noise ComfyUI draws for ``seed``: float32, CPU, one draw for the whole batch."""
    gen = _cpu_generator(_check_seed(seed))
    return torch.randn(tuple(shape), dtype=torch.float32, device="cpu", generator=gen)


class DefaultNoise:
    """ComfyUI's default per-step noise on the CPU: generator seeded ``seed + 1``, one draw per call."""

    def __init__(self, x: torch.Tensor, seed: int) -> None:
        # The +1 keeps the step noise from repeating the initial noise; 64-bit wrap-around matches the
        # low-32-bit semantics of the Mersenne Twister seed.
        self._gen = _cpu_generator((_check_seed(seed) + 1) & _U64)
        self._shape = tuple(x.shape)
        self._device = x.device
        self._dtype = x.dtype

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(self._shape, dtype=torch.float32, device="cpu", generator=self._gen)
        return noise.to(device=self._device, dtype=self._dtype)


class BrownianTreeNoise:
    """Brownian-motion increments in sigma, reproducible for any query order (torchsde tree on CPU)."""

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: float | torch.Tensor,
        sigma_max: float | torch.Tensor,
        seed: int,
    ) -> None:
        import torchsde  # runtime dependency, imported on first use to keep `import anima` light

        t0 = torch.as_tensor(sigma_min).detach().cpu()
        t1 = torch.as_tensor(sigma_max).detach().cpu()
        self._sign = 1
        if not t0 < t1:
            t0, t1, self._sign = t1, t0, -1
        w0 = torch.zeros(tuple(x.shape), dtype=torch.float32, device="cpu")
        self._tree = torchsde.BrownianTree(t0, w0, t1, entropy=_check_seed(seed))
        self._device = x.device
        self._dtype = x.dtype

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        s0 = torch.as_tensor(sigma).detach().cpu().float()
        s1 = torch.as_tensor(sigma_next).detach().cpu().float()
        lo, hi, sign = (s0, s1, 1) if s0 < s1 else (s1, s0, -1)
        w = self._tree(lo, hi) * (self._sign * sign)
        return (w / (s1 - s0).abs().sqrt()).to(device=self._device, dtype=self._dtype)


def make_noise_source(
    kind: NoiseKind, x: torch.Tensor, sigmas: torch.Tensor, seed: int
) -> NoiseSource | None:
    """The noise source a sampler's metadata asks for (None for deterministic samplers).

    The Brownian tree spans the smallest positive sigma to the largest one of the schedule, as in
    ComfyUI (taken before any sampler-internal change of the first sigma).
    """
    if kind == "none":
        return None
    if kind == "default":
        return DefaultNoise(x, seed)
    if kind == "brownian":
        positive = sigmas[sigmas > 0]
        if positive.numel() == 0:
            raise AnimaError("a Brownian noise source needs a schedule with a positive sigma")
        return BrownianTreeNoise(x, positive.min(), sigmas.max(), seed)
    raise AnimaError(f"unknown noise kind {kind!r}; expected 'none', 'default' or 'brownian'")
