"""Hires fix: plan the upscale passes and upscale latents.

Anima falls apart when one img2img pass enlarges by much more than about 1.5x, and above about
2048 px per side (community findings). So a requested factor is split into equal steps of at most
`max_step` (default 1.75 = just above sqrt(3), so 3x becomes two passes of 1.73x and 2x two of
1.41x, while 1.5x stays one pass), each size snapped to a multiple of 16, and a final side above
`max_side` is refused with a message naming the largest factor that fits.

Latent upscalers work in model space on [B, 16, 1, h, w]:
- ``latent-bilinear`` / ``latent-nearest-exact``: `torch.nn.functional.interpolate`;
- ``latent-bislerp``: bilinear in position but spherical in channel space (interpolate the unit
  direction of the 16-channel vectors with slerp and their length linearly), which keeps latent
  vectors at a natural norm instead of shrinking them between samples (the idea of ComfyUI's
  bislerp; this implementation is our own, separable: width then height).
``lanczos`` is a pixel upscaler: decode, resize, encode (the pipeline does it, see `resample`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anima.errors import AnimaError

# Hires pass sizes land on multiples of 16: whole DiT patches, no padding in the passes that add
# the detail (any multiple of 8 would run, this keeps every planned size as it always was).
PASS_MULTIPLE = 16


def _snap(value: float) -> int:
    """The nearest multiple of 16 (halves round up; never below 16)."""
    return max(PASS_MULTIPLE, math.floor(value / PASS_MULTIPLE + 0.5) * PASS_MULTIPLE)


@dataclass(frozen=True)
class HiresPlan:
    """The sizes after each pass, (width, height); empty when there is nothing to do."""

    start: tuple[int, int]
    sizes: tuple[tuple[int, int], ...]
    scale: float

    @property
    def final(self) -> tuple[int, int]:
        return self.sizes[-1] if self.sizes else self.start

    def describe(self) -> str:
        chain = " -> ".join(f"{w}x{h}" for w, h in (self.start, *self.sizes))
        n = len(self.sizes)
        per = self.scale ** (1 / n) if n else 1.0
        return f"hires fix: {self.scale:g}x in {n} pass{'es' if n != 1 else ''} of {per:.2f}x: {chain}"


def plan_passes(
    width: int, height: int, scale: float, *, max_step: float = 1.75, max_side: int = 2048
) -> HiresPlan:
    """Split `scale` into passes of at most `max_step`; refuse a final side above `max_side`."""
    if scale <= 1.0:
        return HiresPlan((width, height), (), scale)
    final = (_snap(width * scale), _snap(height * scale))
    if max(final) > max_side:
        fit = max_side / max(width, height)
        raise AnimaError(
            f"hires fix to {final[0]}x{final[1]} has a side over {max_side} px, where Anima falls apart; "
            f"use --hires-scale {math.floor(fit * 100) / 100:g} or less, or raise --hires-max-side"
        )
    n = max(1, math.ceil(math.log(scale) / math.log(max_step) - 1e-9))
    sizes = []
    for k in range(1, n + 1):
        f = scale ** (k / n)
        sizes.append(final if k == n else (_snap(width * f), _snap(height * f)))
    return HiresPlan((width, height), tuple(sizes), scale)


def _slerp_lerp_axis(z: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resample axis `dim` of [B, C, H, W] to `size`: align_corners=False positions, slerp on C."""
    n = z.shape[dim]
    pos = (torch.arange(size, dtype=torch.float64) + 0.5) * (n / size) - 0.5
    pos = pos.clamp(0, n - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=n - 1)
    t = (pos - i0).to(z.device, z.dtype)
    a, b = z.index_select(dim, i0.to(z.device)), z.index_select(dim, i1.to(z.device))
    shape = [1, 1, 1, 1]
    shape[dim] = size
    t = t.view(shape)
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    near = so.abs() < 1e-4
    so_safe = torch.where(near, torch.ones_like(so), so)
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * omega) / so_safe)
    wb = torch.where(near, t, torch.sin(t * omega) / so_safe)
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return direction * ((1 - t) * na + t * nb)


def bislerp(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width] (see the module docstring)."""
    out = _slerp_lerp_axis(z.float(), width, 3)
    return _slerp_lerp_axis(out, height, 2).to(z.dtype)


LATENT_UPSCALERS = ("latent-bislerp", "latent-nearest-exact", "latent-bilinear")


def upscale_latent(z: torch.Tensor, height: int, width: int, method: str) -> torch.Tensor:
    """Model-space latent [B, 16, 1, h, w] -> [B, 16, 1, height, width] (latent units)."""
    flat = z[:, :, 0]
    if method == "latent-bislerp":
        out = bislerp(flat, height, width)
    elif method == "latent-nearest-exact":
        out = F.interpolate(flat, size=(height, width), mode="nearest-exact")
    elif method == "latent-bilinear":
        out = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    else:
        raise AnimaError(f"unknown latent upscaler {method!r}; choose from {', '.join(LATENT_UPSCALERS)}")
    return out[:, :, None]
