"""Classifier-free guidance, as pure functions of the two predictions.

Convention (pinned by tests): guidance combines *denoised* (x0) predictions, as ComfyUI does:
``uncond + (cond - uncond) * scale``. On the velocity this is algebraically the same
(x0 = x - sigma v is affine in v), but the rounding differs, and we want ComfyUI's numbers.
"""

from __future__ import annotations

import torch


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Plain CFG on x0 predictions."""
    return uncond + (cond - uncond) * scale


def needs_uncond(scale: float) -> bool:
    """At scale exactly 1 the uncond prediction cancels, so its DiT pass is skipped (as ComfyUI)."""
    return scale != 1.0
