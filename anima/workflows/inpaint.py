"""Inpainting: masks, latent-noise-mask denoising, the pixel composite and "only masked" crops.

Mask convention: [B, H, W] float in [0, 1] at the image's resolution, 1 (white) = repaint.

Sampling follows ComfyUI's SetLatentNoiseMask + KSampler (``KSamplerX0Inpaint``): before **every**
model call the unmasked part of the state is replaced by the init latent noised to the call's sigma
with the run's initial noise, ``sigma * noise + (1 - sigma) * init``, and after the call the
unmasked part of the x0 prediction is replaced by the init latent. The latent mask is the pixel mask
averaged over each 8x8 block (ComfyUI samples it bilinearly, which can miss strokes thinner than a
block; the average never does).

The decoded image is then composited in pixel space, ``init * (1 - m) + generated * m``, and
wherever m is 0 the init pixels are copied, so unmasked pixels are byte-identical to the input.

"Only masked" crops the mask's bounding box plus padding (grown to the working aspect ratio),
resizes the crop to the working size, repaints it, resizes back and pastes through the mask, so the
feathered mask is also the seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from anima.errors import AnimaError
from anima.sampling.denoiser import Denoise
from anima.sampling.schedules import add_noise
from anima.workflows.resample import resize_images, resize_masks


# ---------------------------------------------------------------------- loading and shaping
def load_mask(path: str | Path) -> torch.Tensor:
    """A mask image -> [1, H, W] float in [0, 1] (luminance; white = repaint)."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            gray = ImageOps.exif_transpose(im).convert("L")
            arr = np.asarray(gray, dtype=np.float32) / np.float32(255.0)
    except FileNotFoundError:
        raise AnimaError(f"{path}: mask image not found") from None
    except (UnidentifiedImageError, OSError):
        raise AnimaError(f"{path}: not a readable image") from None
    return torch.from_numpy(arr)[None]


def check_mask(mask: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Validate a [B, H, W] (or [H, W]) mask against the image size; returns it as float [B, H, W]."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise AnimaError(f"a mask must be [H, W] or [B, H, W], got shape {tuple(mask.shape)}")
    if tuple(mask.shape[1:]) != (height, width):
        raise AnimaError(
            f"the mask is {mask.shape[2]}x{mask.shape[1]} but the init image is {width}x{height}; "
            "they must be the same size"
        )
    mask = mask.float()
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise AnimaError("mask values must be in [0, 1] (white = repaint)")
    return mask


def grow(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Dilate (px > 0) or erode (px < 0) by `px` pixels with a square window."""
    if px == 0:
        return mask
    k = 2 * abs(px) + 1
    m = mask[:, None]
    if px > 0:
        return F.max_pool2d(m, k, stride=1, padding=abs(px))[:, 0]
    return -F.max_pool2d(-m, k, stride=1, padding=abs(px))[:, 0]


def blur(mask: torch.Tensor, px: int) -> torch.Tensor:
    """Gaussian blur with standard deviation `px` pixels (A1111's "Mask blur"), truncated at 3 sigma.

    Borders are replicated so that a mask touching the edge stays 1 there. Pixels farther than
    3 * px from every masked pixel stay exactly 0.
    """
    if px == 0:
        return mask
    radius = math.ceil(3 * px)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / px) ** 2)
    kernel = kernel / kernel.sum()
    m = F.pad(mask[:, None], (radius, radius, radius, radius), mode="replicate")
    m = F.conv2d(m, kernel.view(1, 1, 1, -1))
    m = F.conv2d(m, kernel.view(1, 1, -1, 1))
    # The blur of an all-zero window is exactly 0; tiny float dust is not, so clear it.
    return torch.where(m > 1e-6, m, 0.0)[:, 0].clamp_(0.0, 1.0)


def prepare_mask(mask: torch.Tensor, grow_px: int = 0, blur_px: int = 0) -> torch.Tensor:
    """Grow, then blur: the mask used for sampling and for the composite."""
    out = blur(grow(mask.float(), grow_px), blur_px)
    if not bool((out > 0).any()):
        raise AnimaError("the mask is empty (all black): there is nothing to repaint")
    return out


def latent_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, H, W] pixel mask -> [B, 1, 1, h, w] latent mask (mean over each 8x8 block)."""
    return F.adaptive_avg_pool2d(mask[:, None].float(), (h, w))[:, :, None]


# ---------------------------------------------------------------------- sampling
def masked_denoiser(denoise: Denoise, init: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> Denoise:
    """Latent-noise-mask semantics around `denoise` (init, noise: model space; mask: latent mask)."""
    keep = 1.0 - mask

    def wrapped(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x = x * mask + add_noise(init, noise, sigma) * keep
        return denoise(x, sigma) * mask + init * keep

    return wrapped


def composite(generated: torch.Tensor, init: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] images through a [B|1, H, W] mask onto `init`; exact copies where mask is 0."""
    m = mask[..., None].to(generated.dtype)
    blended = init * (1.0 - m) + generated * m
    return torch.where(m > 0, blended, init.expand_as(generated))


def ensure_finite(t: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise AnimaError(
            f"{what} contains NaN/inf (numerical overflow); use --dtype bf16 or fp32 and check the "
            "init image and mask"
        )


# ---------------------------------------------------------------------- only masked
@dataclass(frozen=True)
class CropBox:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


def _widen(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    """Grow [lo, hi) to length `want` around its centre, shifted to stay inside [0, limit)."""
    want = min(want, limit)
    extra = want - (hi - lo)
    if extra <= 0:
        return lo, hi
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def crop_box(mask: torch.Tensor, padding: int, work_w: int, work_h: int) -> CropBox:
    """Bounding box of mask > 0 plus `padding`, widened towards the work aspect ratio."""
    m = (mask > 0).any(dim=0)
    ys, xs = torch.nonzero(m.any(dim=1)).flatten(), torch.nonzero(m.any(dim=0)).flatten()
    if ys.numel() == 0:
        raise AnimaError("the mask is empty (all black): there is nothing to repaint")
    height, width = m.shape
    x0, x1 = max(int(xs[0]) - padding, 0), min(int(xs[-1]) + 1 + padding, width)
    y0, y1 = max(int(ys[0]) - padding, 0), min(int(ys[-1]) + 1 + padding, height)
    aspect = work_w / work_h
    if (x1 - x0) / (y1 - y0) < aspect:
        x0, x1 = _widen(x0, x1, round((y1 - y0) * aspect), width)
    else:
        y0, y1 = _widen(y0, y1, round((x1 - x0) / aspect), height)
    return CropBox(x0, y0, x1, y1)


def crop(t: torch.Tensor, box: CropBox) -> torch.Tensor:
    """Crop [B, H, W, ...] images or [B, H, W] masks."""
    return t[:, box.y0 : box.y1, box.x0 : box.x1]


def paste(init: torch.Tensor, repainted: torch.Tensor, mask: torch.Tensor, box: CropBox) -> torch.Tensor:
    """Put a repainted crop (already at the box size) back into `init` through the full-size mask."""
    out = init.expand(repainted.shape[0], -1, -1, -1).clone()
    region = crop(out, box)
    out[:, box.y0 : box.y1, box.x0 : box.x1] = composite(repainted, region, crop(mask, box))
    return out


def only_masked(run, image: torch.Tensor, mask: torch.Tensor, padding: int, width: int, height: int) -> dict:
    """Repaint the mask's neighbourhood at width x height and paste it back into `image`.

    `run(crop_image, crop_mask)` generates at the working size and returns a pipeline Result; the
    answer holds the Result fields for the full image (images, latents, recipes, notes).
    """

    box = crop_box(mask, padding, width, height)
    result = run(
        resize_images(crop(image, box), width, height, "lanczos"),
        resize_masks(crop(mask, box), width, height, "bilinear"),
    )
    back = resize_images(result.images, box.width, box.height, "lanczos")
    note = f"only masked: repainted {box.width}x{box.height} at ({box.x0}, {box.y0}) at {width}x{height}"
    return {
        "images": paste(image, back, mask, box),
        "latents": result.latents,
        "recipes": result.recipes,
        "notes": [*result.notes, note],
    }
