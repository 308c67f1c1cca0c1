"""Variation seeds: initial noise = slerp(strength, noise(seed), noise(variation seed)), as A1111.

Both noises are drawn exactly like the main one (`anima.sampling.noise.initial_noise`, one CPU draw for
the whole batch), so strength 0 is the plain seed's image and strength 1 the variation seed's.
The spherical interpolation runs per image over the flattened latent, which keeps the result at
the norm of a standard normal draw where a plain lerp would shrink it towards the middle; nearly
parallel pairs fall back to a lerp. (A1111 normalises over one tensor axis and has the lerp
fallback's arguments swapped; we do neither, so numbers differ from A1111's by design.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from anima.sampling.noise import initial_noise


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `a` (t=0) to `b` (t=1), per batch element (dim 0)."""
    if t == 0.0:
        return a
    if t == 1.0:
        return b
    af, bf = a.flatten(1).double(), b.flatten(1).double()
    an = af / af.norm(dim=1, keepdim=True).clamp_min(1e-12)
    bn = bf / bf.norm(dim=1, keepdim=True).clamp_min(1e-12)
    dot = (an * bn).sum(1).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    lerp = (1 - t) * af + t * bf
    safe = so.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / torch.where(safe, so, 1.0), 0.0)
    wb = torch.where(safe, torch.sin(t * omega) / torch.where(safe, so, 1.0), 0.0)
    out = torch.where(safe[:, None], wa[:, None] * af + wb[:, None] * bf, lerp)
    return out.to(a.dtype).view_as(a)


def varied_noise(
    seed: int, shape: Sequence[int], variation_seed: int | None = None, strength: float = 0.0
) -> torch.Tensor:
    """The initial noise for `seed`, moved towards `variation_seed`'s noise by `strength`."""
    noise = initial_noise(seed, shape)
    if variation_seed is None or strength == 0.0:
        return noise
    return slerp(strength, noise, initial_noise(variation_seed, shape))
