"""Cross-check the VAE against diffusers' AutoencoderKLQwenImage (test-time oracle only)."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from conftest import TINY, load_st
from diffusers import AutoencoderKLQwenImage

from anima.model.config import VAEConfig
from anima.model.latent import LATENT_MEAN, LATENT_STD
from anima.model.vae import WanVAE

ATOL = 1e-5


def to_diffusers_key(key: str) -> str:
    """Official Wan/Qwen-Image key -> diffusers key (spec §1.6, the diffusers converter's rename)."""
    if key.startswith("conv1."):
        return "quant_conv." + key[len("conv1.") :]
    if key.startswith("conv2."):
        return "post_quant_conv." + key[len("conv2.") :]
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = re.sub(r"^encoder\.downsamples\.", "encoder.down_blocks.", key)

    def up(m: re.Match) -> str:
        n = int(m.group(1))
        if n in (3, 7, 11):
            return f"decoder.up_blocks.{n // 4}.upsamplers.0."
        return f"decoder.up_blocks.{n // 4}.resnets.{n % 4}."

    key = re.sub(r"^decoder\.upsamples\.(\d+)\.", up, key)
    key = key.replace("middle.0.", "mid_block.resnets.0.")
    key = key.replace("middle.1.", "mid_block.attentions.0.")
    key = key.replace("middle.2.", "mid_block.resnets.1.")
    key = key.replace("head.0.", "norm_out.").replace("head.2.", "conv_out.")
    for old, new in (("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."),
                     ("residual.6.", "conv2."), ("shortcut.", "conv_shortcut.")):  # fmt: skip
        key = key.replace(old, new)
    return key


@pytest.fixture(scope="module")
def pair() -> tuple[WanVAE, torch.nn.Module]:
    sd = {k: v.float() for k, v in load_st(TINY / "weights" / "wan21_tiny_vae.safetensors").items()}
    ours_cfg = VAEConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        ours = WanVAE(ours_cfg)
    ours.load_state_dict(sd, strict=True, assign=True)
    ref = AutoencoderKLQwenImage(
        base_dim=ours_cfg.dim,
        z_dim=ours_cfg.z_dim,
        dim_mult=list(ours_cfg.dim_mult),
        num_res_blocks=ours_cfg.num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(ours_cfg.temporal_downsample),
    )
    ref.load_state_dict({to_diffusers_key(k): v for k, v in sd.items()}, strict=True)
    return ours.eval(), ref.eval()


def test_latent_stats_equal_diffusers_defaults() -> None:
    params = inspect.signature(AutoencoderKLQwenImage.__init__).parameters
    assert tuple(params["latents_mean"].default) == LATENT_MEAN
    assert tuple(params["latents_std"].default) == LATENT_STD


def test_decode_matches_diffusers(pair: tuple[WanVAE, torch.nn.Module]) -> None:
    ours, ref = pair
    fx = load_st(TINY / "components" / "vae.safetensors")
    gen = torch.Generator().manual_seed(11)
    for z in (fx["decode.latent"], torch.randn(2, 16, 1, 12, 20, generator=gen) * 2):
        with torch.inference_mode():
            a = ours.decode(z)
            b = ref.decode(z).sample[:, :, 0]
        assert a.shape == b.shape
        err = (a - b).abs().max().item()
        assert err < ATOL, err


def test_encode_matches_diffusers_mode(pair: tuple[WanVAE, torch.nn.Module]) -> None:
    ours, ref = pair
    fx = load_st(TINY / "components" / "vae.safetensors")
    gen = torch.Generator().manual_seed(12)
    fixture_pixels = fx["encode.image"].movedim(-1, 1) * 2 - 1
    for x in (fixture_pixels, torch.rand(2, 3, 96, 160, generator=gen) * 2 - 1):
        with torch.inference_mode():
            a = ours.encode(x)
            b = ref.encode(x[:, :, None]).latent_dist.mode()
        assert a.shape == b.shape
        err = (a - b).abs().max().item()
        assert err < ATOL, err
