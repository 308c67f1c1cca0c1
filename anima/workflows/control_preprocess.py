"""Control-image preprocessors that need no extra model: edges, line art, scribbles, inversion, grayscale.

Which patch wants which input (kohya's published Anima patches; check each model card):

- ``anima-lllite-any-test-like-v2``, ``lineart-1``, ``scribble-1``: a line drawing, dark lines on a
  light background, or a grayscale picture: ``lineart`` / ``scribble`` make one from a photo or
  drawing, ``invert`` turns a white-on-black edge map around, ``grayscale`` keeps only luminance;
- ``depth-1``: a depth map (white = near), ``pose-1``: an OpenPose skeleton render: images the user
  supplies (made by a depth or pose estimator; none is bundled);
- ``anima-lllite-inpainting-v2``: the picture to repaint plus a mask (white = repaint).

Edges come from kornia's Canny detector (what ComfyUI's Canny node runs), an optional dependency
(``pip install 'anima[control]'``). All functions take and return [B, H, W, 3] floats in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anima.errors import AnimaError

PREPROCESSORS = ("none", "invert", "threshold", "grayscale", "canny", "lineart", "scribble")


def _luminance(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] -> [B, H, W] (Rec. 601 weights, as PIL's "L")."""
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _rgb(gray: torch.Tensor) -> torch.Tensor:
    return gray[..., None].expand(*gray.shape, 3).contiguous()


def canny_edges(image: torch.Tensor, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """[B, H, W] edge map (1 = edge) by kornia's Canny; thresholds on gradient magnitude in [0, 1]."""
    try:
        from kornia.filters import canny
    except ImportError:
        raise AnimaError("edge detection needs kornia: pip install 'anima[control]'") from None
    if not 0 <= low <= high <= 1:
        raise AnimaError(f"Canny thresholds must satisfy 0 <= low <= high <= 1, got {low:g} and {high:g}")
    _, edges = canny(_luminance(image.float())[:, None], low_threshold=low, high_threshold=high)
    return edges[:, 0].clamp(0, 1)


def preprocess(image: torch.Tensor, kind: str, *, low: float = 0.1, high: float = 0.2,
               threshold: float = 0.5) -> torch.Tensor:  # fmt: skip
    """Apply preprocessor `kind` (one of `PREPROCESSORS`) to [B, H, W, 3] floats in [0, 1]."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise AnimaError(f"a control image must be [B, H, W, 3], got {tuple(image.shape)}")
    if kind == "none":
        return image
    if kind == "invert":
        return 1.0 - image
    if kind == "grayscale":
        return _rgb(_luminance(image))
    if kind == "threshold":
        return _rgb((_luminance(image) >= threshold).to(image.dtype))
    if kind in ("canny", "lineart", "scribble"):
        edges = canny_edges(image, low, high)
        if kind == "scribble":  # thicker strokes: a 5x5 dilation of the edges
            edges = F.max_pool2d(edges[:, None], 5, stride=1, padding=2)[:, 0]
        return _rgb(edges if kind == "canny" else 1.0 - edges)
    raise AnimaError(f"unknown control preprocessor {kind!r}; choose from {', '.join(PREPROCESSORS)}")


# sd-webui-controlnet / Forge module names -> ours (the A1111 API's units name their preprocessor).
# Only the modules that are the same operation here (the model-based ones are not bundled).
A1111_MODULES = {
    "none": "none", "invert": "invert", "invert (from white bg & black line)": "invert",
    "canny": "canny", "threshold": "threshold", "binary": "threshold", "recolor_luminance": "grayscale",
    "recolor_intensity": "grayscale",
}  # fmt: skip
