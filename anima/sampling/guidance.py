"""Classifier-free guidance and its variants, as pure functions of the two predictions.

Convention (pinned by tests): guidance combines *denoised* (x0) predictions, as ComfyUI does:
``uncond + (cond - uncond) * scale``. On the velocity this is algebraically the same
(x0 = x - sigma v is affine in v), but the rounding differs, and we want ComfyUI's numbers.

Variants (each a pure function; tests pin the formulas on small tensors):

- `cfg`: plain CFG.
- `cfg_zero_star`: CFG-Zero* (Fan et al. 2025, arXiv:2503.18886), the optimized scale as in
  ComfyUI's node: ``a = <x - c, x - u> / ||x - u||^2`` per sample (on the noise-like residuals
  x - x0), result ``a u + s (c - a u)``. The paper's "zero-init" (the first K steps predict zero
  velocity) lives in the denoiser because it needs the step index.
- `apg`: adaptive projected guidance (Sadat et al. 2024, arXiv:2410.02416, Algorithm 1) on x0:
  the guidance ``c - u`` (optionally momentum-averaged and norm-capped) is split into the part
  parallel to ``c`` and the orthogonal rest; ``c + (s - 1) (orth + eta * par)``. At eta 1 without
  momentum or cap it equals CFG. (ComfyUI's APG node lands on ``c + s * update`` instead.)
- `rescale_cfg`: CFG rescale (Lin et al. 2023, arXiv:2305.08891) applied, as the paper says, to the
  velocity prediction: ``v_cfg`` is rescaled to the per-sample std of ``v_cond`` and blended with
  weight `multiplier` (phi), then turned back into x0.

Norms and stds are per sample, over all non-batch dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anima.sampling.names import GUIDANCES


def _dims(t: torch.Tensor) -> list[int]:
    return list(range(1, t.ndim))


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain CFG on x0 predictions."""
    return uncond + (cond - uncond) * scale


def needs_uncond(scale: float) -> bool:
    """At scale exactly 1 the uncond prediction cancels, so its DiT pass is skipped (as ComfyUI).

    True for every variant here: each one reduces to the cond prediction at scale 1.
    """
    return scale != 1.0


def cfg_zero_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float, x: torch.Tensor) -> torch.Tensor:
    """CFG-Zero* optimized scale on x0 predictions; `x` is the state the model saw."""
    rc = (x - cond).flatten(1)
    ru = (x - uncond).flatten(1)
    alpha = (rc * ru).sum(1) / ((ru * ru).sum(1) + 1e-8)
    alpha = alpha.view(-1, *([1] * (cond.ndim - 1)))
    return alpha * uncond + scale * (cond - alpha * uncond)


def apg(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    *,
    eta: float = 0.0,
    norm_threshold: float = 0.0,
    momentum: float = 0.0,
    running: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """APG on x0 predictions. Returns (guided x0, the new momentum average to pass next step)."""
    diff = cond - uncond
    if momentum != 0.0:
        running = diff if running is None else momentum * running + diff
        diff = running
    if norm_threshold > 0:
        norm = diff.flatten(1).norm(dim=1).view(-1, *([1] * (diff.ndim - 1)))
        diff = diff * torch.clamp(norm_threshold / norm.clamp_min(1e-12), max=1.0)
    unit = cond / cond.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (cond.ndim - 1)))
    parallel = (diff * unit).sum(dim=_dims(diff), keepdim=True) * unit
    orthogonal = diff - parallel
    return cond + (scale - 1.0) * (orthogonal + eta * parallel), running


def rescale_cfg(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    x: torch.Tensor,
    sigma: torch.Tensor,
    multiplier: float = 0.7,
) -> torch.Tensor:
    """CFG rescale on the velocity; inputs/outputs are x0 predictions, `sigma` is [B] (> 0)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    v_c = (x - cond) / s
    v_u = (x - uncond) / s
    v_cfg = v_u + scale * (v_c - v_u)
    ratio = v_c.std(dim=_dims(v_c), keepdim=True) / v_cfg.std(dim=_dims(v_cfg), keepdim=True).clamp_min(1e-12)
    v = multiplier * (v_cfg * ratio) + (1.0 - multiplier) * v_cfg
    return x - s * v


@dataclass(frozen=True)
class GuidanceConfig:
    """Which guidance to run and its parameters (validated by `anima.recipe.settings`)."""

    kind: str = "cfg"
    scale: float = 4.0
    rescale: float = 0.7
    apg_eta: float = 0.0
    apg_momentum: float = 0.0
    apg_norm_threshold: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in GUIDANCES:
            raise ValueError(f"unknown guidance {self.kind!r}; choose from {', '.join(GUIDANCES)}")


class Guider:
    """One sampling pass's guidance: the config plus APG's momentum average (hence per pass)."""

    def __init__(self, config: GuidanceConfig) -> None:
        self.config = config
        self._running: torch.Tensor | None = None

    @property
    def needs_uncond(self) -> bool:
        return needs_uncond(self.config.scale)

    def __call__(
        self, cond: torch.Tensor, uncond: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        c = self.config
        if c.kind == "cfg":
            return cfg(cond, uncond, c.scale)
        if c.kind == "cfg-zero-star":
            return cfg_zero_star(cond, uncond, c.scale, x)
        if c.kind == "rescale-cfg":
            if bool((sigma <= 0).any()):
                return cfg(cond, uncond, c.scale)
            return rescale_cfg(cond, uncond, c.scale, x, sigma, c.rescale)
        out, self._running = apg(
            cond,
            uncond,
            c.scale,
            eta=c.apg_eta,
            norm_threshold=c.apg_norm_threshold,
            momentum=c.apg_momentum,
            running=self._running,
        )
        return out
