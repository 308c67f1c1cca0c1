"""The control image (and inpainting mask) as an LLLite patch sees it, exactly as the reference makes it.

ComfyUI (``AnimaLLLiteApply`` + ``AnimaLLLitePatch`` in ``comfy/ldm/anima/lllite.py``, resizing by
``comfy.utils.common_upscale``), as the fixture README (``shared/fixtures/anima-lllite``) records it:

1. the target is 8 x the latent size *after* the DiT pads it to a multiple of the patch size (an odd
   17 x 13 latent is run as 18 x 14, so the control becomes 144 x 112 and its 1/16 grid is the DiT's
   token grid);
2. only the RGB channels are kept; a centre crop to the target's aspect ratio cuts
   ``round((W - W * a_new / a_old) / 2)`` columns (or rows) from each side, Python's ``round`` on a
   float64 (halves to even), then bicubic interpolation (A = -0.75, no antialias, borders clamped);
3. ``clamp(0, 1)``, cast to the compute dtype, then ``* 2 - 1``;
4. 4-channel (inpainting) patches: the mask gets the same crop with ``nearest-exact``, is repeated to
   the image batch and thresholded at 0.5 (8-bit 127 -> 0, 128 -> 1); with ``inpaint_masked_input``
   the picture is zeroed under it; the input is ``cat(image, mask * 2 - 1)``; no mask means all zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from anima.errors import AnimaError
from anima.workflows.comfy_image import centre_crop  # common_upscale's crop, as AnimaLLLiteApply's


def padded_latent_size(height: int, width: int, patch: int = 2) -> tuple[int, int]:
    """The latent size the DiT runs at: padded up to a multiple of its patch size."""
    return height + (-height % patch), width + (-width % patch)


def crop_resize(t: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, height, width]: centre crop, then ``interpolate`` in `mode`."""
    return F.interpolate(centre_crop(t, width, height), size=(height, width), mode=mode)


def control_input(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    width: int,
    height: int,
    channels: int,
    masked_input: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The conditioning network's input [B, channels, height, width] in [-1, 1].

    image: [B, H, W, C >= 3] floats in [0, 1] (extra channels dropped); mask: [B, H', W'] floats in
    [0, 1] (white = repaint), used by 4-channel patches only, any size (cropped on its own, as the
    reference does; front ends check that it matches the image)."""
    if image.ndim != 4 or image.shape[-1] < 3:
        raise AnimaError(f"a control image must be [B, H, W, 3] floats, got {tuple(image.shape)}")
    pixels = crop_resize(image[..., :3].movedim(-1, 1).float(), width, height, "bicubic").clamp(0.0, 1.0)
    pixels = pixels.to(device=device, dtype=dtype) * 2.0 - 1.0
    if channels == 3:
        return pixels
    if channels != 4:
        raise AnimaError(f"LLLite patches take 3 or 4 input channels, this one {channels}")
    m = torch.zeros_like(image[..., 0]) if mask is None else mask
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise AnimaError(f"a control mask must be [B, H, W], got {tuple(m.shape)}")
    m = crop_resize(m[:, None].float(), width, height, "nearest-exact")
    if m.shape[0] != pixels.shape[0]:
        if pixels.shape[0] % m.shape[0]:
            raise AnimaError(f"{m.shape[0]} control masks cannot be shared by {pixels.shape[0]} images")
        m = m.repeat(pixels.shape[0] // m.shape[0], 1, 1, 1)
    m = (m >= 0.5).to(device=device, dtype=dtype)
    if masked_input:
        pixels = pixels * (m < 0.5).to(pixels.dtype)
    return torch.cat((pixels, m * 2.0 - 1.0), dim=1)
