"""Train the DEMO model's tiny Wan-2.1 VAE (same architecture and keys as the real one, base width 8).

The real VAE is far too big for the demo's 20 MB, and a random one decodes noise, so the demo
trains its own: a short reconstruction run (L1 + L2 on pixels) on whole 64x64 shapes images. (Random
crops would be cheaper, but with the position code below the encoder learns position-dependent
features on whole images that a crop-trained decoder never saw: measured, reconstructions came out
shifted and recoloured.) Two details make the latents diffusion-friendly:

- Gaussian noise is added to the latent before decoding, so the decoder tolerates the small errors
  a denoiser leaves, and a light L2 penalty keeps the latent scale in check.
- `calibrate` then folds a per-channel affine map into the quant conv (``conv1``) and its inverse
  into the post-quant conv (``conv2``), so that the encoder's latents have the mean and standard
  deviation of the real Wan-2.1 VAE. `anima.model.latent.normalize_latent` (fixed Wan statistics) then
  maps them to zero mean, unit variance, exactly what the DiT is trained on. Decoding is unchanged
  by the fold (up to float rounding).

**Position code.** The DiT has no absolute position embedding: its only positional signal is the
relative 3-D RoPE of self-attention, so "top left" can only be learned by noticing, through
attention, where the image borders are. A tiny model learns that quickly when the data rewards it
densely and hardly at all from one small shape per image (measured: position stayed at chance after
1500 steps). So the first `position_channels` latent channels of the demo VAE carry a fixed
coordinate code, the same for every image (x in channel 0, y in channel 1): the encoder is trained
to output it on whole images, and the decoder ignores those channels (their post-quant-conv
weights are zero and stay zero). Every latent the DiT learns from then contains a dense, trivially
learnable position reference. The images are unchanged; the VAE is still a Wan-2.1 VAE by
architecture and keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from anima.model.config import VAEConfig
from anima.model.latent import LATENT_MEAN, LATENT_STD
from anima.model.vae import WanVAE


@dataclass(frozen=True)
class VAETrainConfig:
    dim: int = 8
    steps: int = 3000
    batch_size: int = 6
    lr: float = 2e-3
    latent_noise: float = 0.1  # std of the noise added to latents before decoding, in latent-std units
    latent_l2: float = 1e-4
    position_channels: int = 2  # latent channels holding the fixed coordinate code (0: none)
    decoder_steps: int = 2000  # `polish_decoder`: decoder only, encoder frozen
    decoder_batch: int = 8
    decoder_lr: float = 1e-3
    seed: int = 0


def init_vae(cfg: VAEConfig, seed: int) -> torch.nn.Module:
    """A WanVAE with a trainable init (the module's own init is all zeros, meant for loading).

    Convs N(0, 1/fan_in) on the last temporal tap (the only one used on images; the other taps stay
    zero); the last conv of every residual branch and every attention output projection start at
    zero, so each block starts as the identity, which trains faster and more steadily.
    """

    g = torch.Generator().manual_seed(seed)
    vae = WanVAE(cfg)
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith(("residual.6.weight", "proj.weight")):
                p.zero_()
            elif p.ndim == 5:
                p.zero_()
                fan_in = p.shape[1] * p.shape[3] * p.shape[4]
                p[:, :, -1] = torch.randn(p[:, :, -1].shape, generator=g) / math.sqrt(fan_in)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(math.prod(p.shape[1:])))
    return vae


def position_code(size: tuple[int, int], channels: int = 2) -> torch.Tensor:
    """[channels, h, w] fixed coordinate code: x in channel 0, y in channel 1, unit standard deviation."""
    h, w = size
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grids = [xs / xs.std(), ys / ys.std()]
    return torch.stack(grids[:channels]) if channels else torch.zeros(0, h, w)


def _encode_raw(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> latent mean [B, z, h, w] (the 4-D path `WanVAE.encode` wraps)."""
    return vae.conv1(vae.encoder(x))[:, : vae.cfg.z_dim]


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1], channels-last (faster convs on CPU)."""
    return (images.permute(0, 3, 1, 2).float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)


def _decode_noisy(
    vae: torch.nn.Module, z: torch.Tensor, scale: torch.Tensor, cfg: VAETrainConfig, g: torch.Generator
) -> torch.Tensor:
    """Decode `z` plus Gaussian noise of std ``latent_noise * scale``, with the position code zeroed."""
    pc = cfg.position_channels
    noisy = z + cfg.latent_noise * scale * torch.randn(z.shape, generator=g)
    # Zero inputs give the code columns of conv2 zero gradients, so they stay zero.
    noisy = torch.cat([torch.zeros_like(noisy[:, :pc]), noisy[:, pc:]], dim=1)
    return vae.decoder(vae.conv2(noisy))


def _reconstruction_loss(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (y - x).abs().mean() + (y - x).square().mean()


def _warmup_cosine(opt: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.5 + 0.5 * math.cos(math.pi * s / steps))
    )


def _step(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR, loss: torch.Tensor) -> None:
    """One optimiser and schedule step on `loss` (both training phases)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def train_vae(
    images: torch.Tensor,
    cfg: VAETrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> torch.nn.Module:
    """images: uint8 [N, H, W, 3]. Returns the jointly trained, calibrated VAE (fp32, eval mode);
    `polish_decoder` is the second phase."""
    vae = init_vae(VAEConfig(dim=cfg.dim), cfg.seed)
    pc = cfg.position_channels
    with torch.no_grad():
        vae.conv2.weight[:, :pc] = 0  # the decoder never reads the position code
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = _warmup_cosine(opt, 50, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    n = images.shape[0]
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        x = _pixels(images[idx])
        z = _encode_raw(vae, x)
        y = _decode_noisy(vae, z, z.detach().std(), cfg, g)
        rec = _reconstruction_loss(y, x)
        loss = rec + cfg.latent_l2 * z[:, pc:].square().mean()
        if pc:
            loss = loss + (z[:, :pc] - position_code(z.shape[-2:], pc)).square().mean()
        _step(opt, sched, loss)
        if progress is not None:
            progress(step + 1, cfg.steps, rec.item())
    vae.eval().requires_grad_(False)
    calibrate(vae, images)
    return vae


def polish_decoder(
    vae: torch.nn.Module,
    images: torch.Tensor,
    cfg: VAETrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
) -> None:
    """Train the post-quant conv and the decoder alone on the frozen (calibrated) encoder's latents.

    Why: in the joint phase the decoder chases a moving encoder and stays blurry; measured on the
    demo VAE, reconstructed stars (the thinnest details the demo draws) were read back as stars
    5/57 times after the joint phase and 55/57 after this phase, with the other shapes unchanged.
    The encoder, hence every latent the DiT is trained on and the calibration, is untouched.
    """
    pc = cfg.position_channels
    x_all = _pixels(images)
    with torch.no_grad():
        z_all = torch.cat([_encode_raw(vae, x_all[i : i + 64]) for i in range(0, len(x_all), 64)])
    params = [*vae.conv2.parameters(), *vae.decoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.decoder_lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = _warmup_cosine(opt, 30, cfg.decoder_steps)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    vae.decoder.train()
    for step in range(cfg.decoder_steps):
        idx = torch.randint(0, len(x_all), (cfg.decoder_batch,), generator=g)
        x, z = x_all[idx], z_all[idx]
        rec = _reconstruction_loss(_decode_noisy(vae, z, z[:, pc:].std(), cfg, g), x)
        _step(opt, sched, rec)
        if progress is not None:
            progress(step + 1, cfg.decoder_steps, rec.item())
    vae.eval().requires_grad_(False)


@torch.no_grad()
def latent_stats(
    vae: torch.nn.Module, images: torch.Tensor, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the encoder's latents over uint8 `images` [N, H, W, 3]."""
    zs = []
    for i in range(0, len(images), batch):
        zs.append(_encode_raw(vae, _pixels(images[i : i + batch])).transpose(0, 1).flatten(1))
    z = torch.cat(zs, dim=1)
    return z.mean(dim=1), z.std(dim=1)


@torch.no_grad()
def calibrate(vae: torch.nn.Module, images: torch.Tensor) -> None:
    """Fold z' = a z + b into conv1 (rows of the mean half) and z = (z' - b) / a into conv2, so that
    latents have the Wan-2.1 per-channel mean/std (`anima.model.latent`). Exact reparametrisation."""

    mean, std = latent_stats(vae, images)
    target_mean = torch.tensor(LATENT_MEAN)
    target_std = torch.tensor(LATENT_STD)
    a = target_std / std.clamp_min(1e-6)
    b = target_mean - a * mean
    zd = vae.cfg.z_dim
    w1, b1 = vae.conv1.weight, vae.conv1.bias  # [2z, 2z, 1, 1, 1], [2z]
    w1[:zd] *= a.view(-1, 1, 1, 1, 1)
    b1[:zd] = a * b1[:zd] + b
    w2, b2 = vae.conv2.weight, vae.conv2.bias  # [z, z, 1, 1, 1]: input channel j sees z'_j
    b2 -= (w2[:, :, 0, 0, 0] * (b / a)[None, :]).sum(dim=1)
    w2 /= a.view(1, -1, 1, 1, 1)
