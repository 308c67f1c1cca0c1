"""Resizing float images and masks (Lanczos through PIL, in float32, without 8-bit rounding).

Images are [B, H, W, 3] float32 in [0, 1]; masks [B, H, W] float32 in [0, 1]. Lanczos overshoots,
so results are clamped back to [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

_FILTERS = ("lanczos", "bilinear", "nearest")


def _pil_filter(method: str):
    from PIL import Image

    if method not in _FILTERS:
        raise ValueError(f"unknown resize method {method!r}; choose from {', '.join(_FILTERS)}")
    return {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[method]


def _resize_plane(plane: np.ndarray, width: int, height: int, method: str) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))  # mode "F"
    return np.asarray(im.resize((width, height), _pil_filter(method)), dtype=np.float32)


def resize_images(images: torch.Tensor, width: int, height: int, method: str = "lanczos") -> torch.Tensor:
    """[B, H, W, 3] -> [B, height, width, 3]; returns the input unchanged when the size matches."""
    if images.shape[1:3] == (height, width):
        return images
    arr = images.detach().float().cpu().numpy()
    out = np.stack(
        [np.stack([_resize_plane(img[..., c], width, height, method) for c in range(3)], -1) for img in arr]
    )
    return torch.from_numpy(out).clamp_(0.0, 1.0)


def resize_masks(masks: torch.Tensor, width: int, height: int, method: str = "bilinear") -> torch.Tensor:
    """[B, H, W] -> [B, height, width]; unchanged when the size matches."""
    if masks.shape[1:3] == (height, width):
        return masks
    arr = masks.detach().float().cpu().numpy()
    out = np.stack([_resize_plane(m, width, height, method) for m in arr])
    return torch.from_numpy(out).clamp_(0.0, 1.0)
