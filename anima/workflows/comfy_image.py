"""Image and mask handling as ComfyUI's nodes do it, for graphs re-made by anima.

- Resizing: ``comfy.utils.common_upscale`` (used by ImageScale, ImageScaleBy, ResizeImageMaskNode
  and the latent upscalers): with ``crop="center"`` first cut to the target aspect ratio, removing
  ``round((W - W * a_new / a_old) / 2)`` columns (or the same in rows) from each side, Python's
  round on a float; then ``torch.nn.functional.interpolate`` in the named mode (no antialias,
  default ``align_corners``), except ``lanczos``, which goes through 8-bit pixels and PIL's LANCZOS
  filter (bytes = floor(clip(255 x)), result bytes / 255). This is our implementation of that
  behaviour, checked against ComfyUI's numbers in the tests.
- Init images: the preparation a recipe recorded (`anima.recipe.image_ops`), then VAEEncode's crop
  to multiples of 8.
- Masks: LoadImage's MASK is ``1 - alpha / 255`` (a picture without alpha gives a 64x64 zero mask);
  LoadImageMask takes that, or one colour channel of the RGB picture.
- SetLatentNoiseMask: the mask, any size, is scaled to the latent by ``comfy.utils.reshape_mask``
  (trilinear over (frames, height, width) of a [1, 1, B, H, W] view); it is used as is, without
  feathering or a pixel composite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anima.errors import AnimaError
from anima.recipe.image_ops import Crop, ImageOp, Resize, parse_ops
from anima.workflows.init_image import crop_to_multiple

LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")


def centre_crop(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[..., H, W] cut to the aspect ratio of `width` x `height` (common_upscale's "center")."""
    old_w, old_h = x.shape[-1], x.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = dy = 0
    if old_aspect > new_aspect:
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x.narrow(-2, dy, old_h - 2 * dy).narrow(-1, dx, old_w - 2 * dx)


def _lanczos(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in x.detach().float().cpu():  # [C, H, W]
        arr = np.clip(np.float32(255.0) * img.numpy(), 0, 255).astype(np.uint8)
        pil = Image.fromarray(arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1))
        res = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32)
        res = res / np.float32(255.0)
        out.append(torch.from_numpy(res[None] if res.ndim == 2 else np.moveaxis(res, -1, 0).copy()))
    return torch.stack(out).to(x.dtype)


def common_upscale(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"):
    """[B, C, H, W] -> [B, C, height, width] (see the module docstring)."""
    if crop == "center":
        x = centre_crop(x, width, height)
    if method == "lanczos":
        return _lanczos(x, width, height)
    if method == "bislerp":
        raise AnimaError("bislerp resizing is only for latents, and anima does not reproduce it yet")
    if method not in LATENT_METHODS:
        raise AnimaError(f"unknown resize method {method!r}")
    return F.interpolate(x, size=(height, width), mode=method)


def apply_ops(image: torch.Tensor, ops: tuple[ImageOp, ...]) -> torch.Tensor:
    """[B, H, W, C] images through resize / crop operations."""
    for op in ops:
        if isinstance(op, Resize):
            image = common_upscale(image.movedim(-1, 1), op.width, op.height, op.method, op.crop).movedim(
                1, -1
            )
        elif isinstance(op, Crop):
            h, w = image.shape[1:3]
            if op.x + op.width > w or op.y + op.height > h:
                raise AnimaError(f"crop {op.text()} does not fit a {w}x{h} image")
            image = image[:, op.y : op.y + op.height, op.x : op.x + op.width]
    return image


def prepare_init(image: torch.Tensor, text: str) -> torch.Tensor:
    """An init image [1, H, W, 3] prepared as the recipe says (not clamped: ComfyUI hands a bicubic
    overshoot to VAEEncode as it is), then cropped to multiples of 8 like VAEEncode."""
    return crop_to_multiple(apply_ops(image, parse_ops(text)))


def load_mask(path: str | Path, channel: str) -> torch.Tensor:
    """A mask as LoadImage (alpha) or LoadImageMask (alpha, red, green, blue) gives it: [1, H, W]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if channel == "alpha":
                if "A" not in im.getbands():
                    return torch.zeros(1, 64, 64)
                arr = np.asarray(im.getchannel("A"), dtype=np.uint8).astype(np.float32) / np.float32(255.0)
                return 1.0 - torch.from_numpy(arr)[None]
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise AnimaError(f"{path}: mask image not found") from None
    except (UnidentifiedImageError, OSError):
        raise AnimaError(f"{path}: not a readable image") from None
    index = {"red": 0, "green": 1, "blue": 2}.get(channel)
    if index is None:
        raise AnimaError(f"unknown mask channel {channel!r}")
    return torch.from_numpy(rgb[..., index].copy())[None]


def check_noise_mask(mask: torch.Tensor) -> torch.Tensor:
    """A SetLatentNoiseMask mask: [B, H, W] (or [H, W]) floats in [0, 1], any size."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise AnimaError(f"a mask must be [H, W] or [B, H, W], got shape {tuple(mask.shape)}")
    mask = mask.float()
    if not bool(torch.isfinite(mask).all()) or mask.min() < 0 or mask.max() > 1:
        raise AnimaError("mask values must be in [0, 1] (1 = repaint)")
    return mask


def noise_mask_latent(mask: torch.Tensor, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """[B, H, W] mask -> [B', 1, 1, h, w] for a [B', C, 1, h, w] latent (``reshape_mask``)."""
    b, _, t, h, w = latent_shape
    m = mask.float().reshape(1, 1, -1, mask.shape[-2], mask.shape[-1])
    m = F.interpolate(m, size=(t, h, w), mode="trilinear")  # [1, 1, t, h, w]
    m = m.reshape(-1, 1, t, h, w)
    if m.shape[0] < b:
        m = m.repeat(-(-b // m.shape[0]), 1, 1, 1, 1)
    return m[:b]


def upscale_latent(latent: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """A VAE-space latent [B, C, 1, h, w] through LatentUpscale / LatentUpscaleBy (latent units)."""
    return common_upscale(latent[:, :, 0], width, height, method, crop)[:, :, None]
