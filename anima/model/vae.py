"""Qwen-Image VAE (= Wan-2.1 causal 3-D VAE), single-image path.

Attribute names equal the official bare checkpoint keys (``encoder.downsamples.3.residual.2.weight``,
``conv1.weight`` = quant conv, ``conv2.weight`` = post-quant conv, ...) so the file loads with
``strict=True`` and no renaming. Images are one frame, for which the causal 3-D network is exactly a
2-D network (see `anima.model.vae_blocks`); everything internal runs on [N, C, H, W].

Conventions (ComfyUI's, which the fixtures follow):

- `encode` takes [B, 3, H, W] in [-1, 1] and returns the posterior **mean** [B, 16, 1, H/8, W/8] in
  VAE space (not normalised; see `anima.model.latent` for model space).
- `decode` takes [B, 16, 1, h, w] in VAE space and returns [B, 3, 8h, 8w] clamped to [-1, 1].
- `image_to_vae_input` / `vae_output_to_image` convert from/to the [B, H, W, 3] float images in
  [0, 1] used everywhere else: encoder input ``2 * img - 1``, image ``clamp((x + 1) / 2, 0, 1)``.

Compute happens in the parameters' dtype, in the channels-last layout; results come back in the
input's dtype (`decode` returns a channels-last strided [B, 3, H, W], which makes the
`vae_output_to_image` permute free).
"""

from __future__ import annotations

import torch
from torch import nn

from anima.errors import AnimaError
from anima.model.config import VAEConfig
from anima.model.vae_blocks import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMSNorm


def image_to_vae_input(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] image in [0, 1] -> [B, 3, H, W] encoder input in [-1, 1]."""
    if image.ndim != 4 or image.shape[-1] != 3:
        raise AnimaError(f"expected an image batch [B, H, W, 3], got shape {tuple(image.shape)}")
    return (image.movedim(-1, 1) * 2.0 - 1.0).contiguous()


def vae_output_to_image(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] decoder output -> [B, H, W, 3] image, ``clamp((x + 1) / 2, 0, 1)``."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).contiguous()


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _head(dim: int, out_channels: int) -> nn.Sequential:
    # Indices 0 and 2 hold parameters, as in the checkpoint.
    return nn.Sequential(RMSNorm(dim), nn.SiLU(inplace=True), CausalConv3d(dim, out_channels, (3, 3, 3)))


class Encoder(nn.Module):
    """RGB -> 2 * z_dim channels (mean, log-variance) at 1/8 resolution."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], (3, 3, 3))
        layers: list[nn.Module] = []
        last = len(cfg.dim_mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != last:
                layers.append(
                    Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d")
                )
        self.downsamples = nn.Sequential(*layers)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], cfg.z_dim * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Decoder(nn.Module):
    """z_dim channels -> RGB at 8x resolution (three residual blocks per level)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *reversed(mult))]
        temporal_upsample = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3))
        self.middle = _middle(dims[0])
        layers: list[nn.Module] = []
        last = len(mult) - 1
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim //= 2  # the previous level's upsample conv halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != last:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(dims[-1], 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.upsamples(self.middle(self.conv1(z))))


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile origins covering [0, size) with neighbours overlapping >= `overlap`."""
    if size <= tile:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))  # ceil: tiles needed at the minimum overlap
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _feather(length: int, ramp_in: int, ramp_out: int, device: torch.device) -> torch.Tensor:
    """1-D blend weight: linear ramps over the overlaps with the previous/next tile, else 1.

    Ramps use (j + 0.5) / n so that two complementary ramps sum to exactly 1 and no weight is 0.
    """
    w = torch.ones(length, dtype=torch.float32, device=device)
    if ramp_in > 0:
        w[:ramp_in] *= (torch.arange(ramp_in, dtype=torch.float32, device=device) + 0.5) / ramp_in
    if ramp_out > 0:
        w[length - ramp_out :] *= (
            torch.arange(ramp_out, 0, -1, dtype=torch.float32, device=device) - 0.5
        ) / ramp_out
    return w


class WanVAE(nn.Module):
    """The Qwen-Image / Wan-2.1 VAE for single images. Build on ``meta`` and load with ``assign=True``."""

    def __init__(self, cfg: VAEConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or VAEConfig()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, (1, 1, 1))  # quant conv
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1))  # post-quant conv
        self.decoder = Decoder(cfg)

    @property
    def spatial_factor(self) -> int:
        return self.cfg.spatial_factor

    def _param_dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> posterior mean [B, z_dim, 1, H/8, W/8] (VAE space)."""
        f = self.spatial_factor
        if image.ndim != 4 or image.shape[1] != 3:
            raise AnimaError(f"VAE encode expects [B, 3, H, W] pixels, got shape {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % f or w % f:
            raise AnimaError(f"image size {w}x{h} is not a multiple of {f}; crop or resize it first")
        x = image.to(dtype=self._param_dtype(), memory_format=torch.channels_last)
        moments = self.conv1(self.encoder(x))
        mean = moments[:, : self.cfg.z_dim]  # the log-variance half is unused: no sampling
        return mean.unsqueeze(2).to(image.dtype).contiguous()

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.cfg.z_dim or z.shape[2] != 1:
            raise AnimaError(
                f"VAE decode expects a latent [B, {self.cfg.z_dim}, 1, h, w], got shape {tuple(z.shape)}"
            )

    def _decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        x = z[:, :, 0].to(dtype=self._param_dtype(), memory_format=torch.channels_last)
        return self.decoder(self.conv2(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, z_dim, 1, h, w] (VAE space) -> [B, 3, 8h, 8w] clamped to [-1, 1]."""
        self._check_latent(z)
        return self._decode_unclamped(z).clamp_(-1.0, 1.0).to(z.dtype)

    def decode_tiled(self, z: torch.Tensor, tile_latent: int = 64, overlap_latent: int = 8) -> torch.Tensor:
        """Like `decode`, in overlapping latent tiles blended with linear feathering.

        Bounds peak memory by the tile size. Not exact: the mid-block attention is global and conv
        receptive fields cross tile borders, so seams are hidden by the overlap, not removed.
        """
        self._check_latent(z)
        if tile_latent < 1 or not 0 <= overlap_latent < tile_latent:
            raise AnimaError(
                f"bad tiling: tile {tile_latent}, overlap {overlap_latent} (need 0 <= overlap < tile)"
            )
        f = self.spatial_factor
        b, _, _, h, w = z.shape
        th, tw = min(tile_latent, h), min(tile_latent, w)
        ys, xs = _tile_starts(h, th, overlap_latent), _tile_starts(w, tw, overlap_latent)
        out = torch.zeros(b, 3, h * f, w * f, dtype=torch.float32, device=z.device)
        weight = torch.zeros(1, 1, h * f, w * f, dtype=torch.float32, device=z.device)
        for iy, y0 in enumerate(ys):
            # Ramp widths = actual overlap with each neighbour (tiles are spread evenly).
            ry_in = (ys[iy - 1] + th - y0) * f if iy > 0 else 0
            ry_out = (y0 + th - ys[iy + 1]) * f if iy + 1 < len(ys) else 0
            wy = _feather(th * f, ry_in, ry_out, z.device)
            for ix, x0 in enumerate(xs):
                rx_in = (xs[ix - 1] + tw - x0) * f if ix > 0 else 0
                rx_out = (x0 + tw - xs[ix + 1]) * f if ix + 1 < len(xs) else 0
                wx = _feather(tw * f, rx_in, rx_out, z.device)
                mask = wy[:, None] * wx[None, :]
                tile = self._decode_unclamped(z[..., y0 : y0 + th, x0 : x0 + tw]).float()
                ys_px, xs_px = slice(y0 * f, (y0 + th) * f), slice(x0 * f, (x0 + tw) * f)
                out[..., ys_px, xs_px] += tile * mask
                weight[..., ys_px, xs_px] += mask
        return (out / weight).clamp_(-1.0, 1.0).to(z.dtype)
