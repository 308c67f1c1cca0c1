"""The VAE's single-frame 2-D path against the causal 3-D convolution it replaces, and the half-precision
RMSNorm shortcut against the fp32 norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, load_st

from anima.model.config import VAEConfig
from anima.model.vae import WanVAE
from anima.model.vae_blocks import CausalConv3d, RMSNorm


def causal_conv3d_reference(x5: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Wan's causal conv: pad H/W symmetrically and 2*pad_t zero frames in front, then conv3d."""
    kt, kh, kw = weight.shape[2:]
    x5 = F.pad(x5, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0))
    return F.conv3d(x5, weight, bias)


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 1), (3, 1, 1)])
def test_2d_conv_equals_causal_3d_conv_on_one_frame(kernel):
    g = torch.Generator().manual_seed(0)
    conv = CausalConv3d(6, 5, kernel)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(5, generator=g))
    x = torch.randn(2, 6, 9, 7, generator=g)
    ref = causal_conv3d_reference(x[:, :, None], conv.weight, conv.bias)[:, :, 0]
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)
    # channels-last input gives the same numbers
    torch.testing.assert_close(
        conv(x.contiguous(memory_format=torch.channels_last)), ref, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_rmsnorm_is_within_one_ulp_of_fp32(dtype):
    g = torch.Generator().manual_seed(1)
    norm = RMSNorm(96)
    with torch.no_grad():
        norm.gamma.copy_(1 + 0.1 * torch.randn(norm.gamma.shape, generator=g))
    x = (3 * torch.randn(2, 96, 8, 8, generator=g)).to(dtype).contiguous(memory_format=torch.channels_last)
    ref = norm(x.float())
    got = norm.to(dtype)(x)
    assert got.dtype == dtype
    ulp = {torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    assert ((got.float() - ref).abs() <= 2 * ulp * ref.abs().clamp_min(1e-3)).all()


@torch.no_grad()
def test_bf16_decode_close_to_fp32():
    sd = {k: v.float() for k, v in load_st(TINY / "weights" / "wan21_tiny_vae.safetensors").items()}
    cfg = VAEConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        vae = WanVAE(cfg)
    vae.load_state_dict(sd, strict=True, assign=True)
    z = load_st(TINY / "components" / "vae.safetensors")["decode.latent"]
    ref = vae.eval().decode(z)
    got = vae.to(torch.bfloat16).decode(z)
    err = (got - ref).abs()
    print(f"bf16 decode: max {err.max():.4f}, mean {err.mean():.5f}")
    assert err.mean() < 0.01 and err.max() < 0.1
