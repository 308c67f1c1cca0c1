"""The latent normalisation convention (the one place it lives).

Two spaces exist for a latent [B, 16, T, h, w]:

- **VAE space** ("latent"): what the VAE encoder returns (posterior mean) and the decoder consumes.
- **model space** ("latent_normalized"): what the DiT and the samplers work in,
  ``z_norm = (z - mean) / std`` per channel.

The vectors are the Wan-2.1 statistics, identical in ComfyUI's ``Wan21`` latent format (scale factor
1.0), diffusers' ``AutoencoderKLQwenImage`` defaults and diffusion-pipe. The operation order
(subtract then divide; multiply then add) matches ComfyUI, so results agree bit for bit.
"""

from __future__ import annotations

import torch

from anima.errors import AnimaError

# Tuples, not tensors: immutable module state; tensors are built on the caller's device/dtype.
LATENT_CHANNELS = 16
LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


def _stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean/std shaped [16, 1, ...] to broadcast over the channel axis (dim 1) of `z`."""
    if z.ndim < 2 or z.shape[1] != LATENT_CHANNELS:
        raise AnimaError(
            f"expected a latent with {LATENT_CHANNELS} channels on dim 1, got shape {tuple(z.shape)}"
        )
    shape = (LATENT_CHANNELS,) + (1,) * (z.ndim - 2)
    # The constants are float32 in every reference; build them in fp32 and cast once.
    mean = torch.tensor(LATENT_MEAN, dtype=torch.float32, device=z.device).view(shape).to(z.dtype)
    std = torch.tensor(LATENT_STD, dtype=torch.float32, device=z.device).view(shape).to(z.dtype)
    return mean, std


def normalize_latent(z: torch.Tensor) -> torch.Tensor:
    """VAE space -> model space: ``(z - mean) / std`` per channel. `z` is [B, 16, ...]."""
    mean, std = _stats(z)
    return (z - mean) / std


def denormalize_latent(z_norm: torch.Tensor) -> torch.Tensor:
    """Model space -> VAE space: ``z_norm * std + mean`` per channel. `z_norm` is [B, 16, ...]."""
    mean, std = _stats(z_norm)
    return z_norm * std + mean


# A linear projection of a model-space latent to RGB, for cheap previews while sampling: the
# factors ComfyUI's Wan21 latent format uses for its "latent2rgb" previewer (16 x 3, plus a bias),
# so a preview here looks like one there. Not an image: one pixel per 8x8 block, rough colours.
PREVIEW_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420), (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975), (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)  # fmt: skip
PREVIEW_RGB_BIAS: tuple[float, float, float] = (-0.1835, -0.0868, -0.3360)


def preview_rgb(x0: torch.Tensor) -> torch.Tensor:
    """First image of a model-space latent [B, 16, T, h, w] -> uint8 RGB [h, w, 3] (first frame)."""
    z = x0[0, :, 0].float().cpu()  # [16, h, w]
    factors = torch.tensor(PREVIEW_RGB_FACTORS, dtype=torch.float32)  # [16, 3]
    rgb = torch.einsum("chw,cr->hwr", z, factors) + torch.tensor(PREVIEW_RGB_BIAS)
    return ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8)
