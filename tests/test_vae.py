"""VAE and latent-normalisation tests against the ComfyUI tiny fixtures (fp32, CPU)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, load_st
from PIL import Image

from anima.errors import AnimaError
from anima.model.config import VAEConfig
from anima.model.latent import LATENT_MEAN, LATENT_STD, denormalize_latent, normalize_latent
from anima.model.vae import WanVAE, image_to_vae_input, vae_output_to_image
from anima.model.vae_blocks import AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMSNorm

ATOL = 2e-5  # measured ~2e-6 (encode) / ~7e-7 (decode); ComfyUI's own rerun noise is ~8e-6


@pytest.fixture(scope="module")
def fx() -> dict[str, torch.Tensor]:
    return load_st(TINY / "components" / "vae.safetensors")


def load_tiny_vae() -> WanVAE:
    sd = {k: v.float() for k, v in load_st(TINY / "weights" / "wan21_tiny_vae.safetensors").items()}
    cfg = VAEConfig.from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        vae = WanVAE(cfg)
    vae.load_state_dict(sd, strict=True, assign=True)
    return vae.eval()


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    return load_tiny_vae()


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- latent normalisation


def test_latent_constants_pinned() -> None:
    assert LATENT_MEAN == (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )  # fmt: skip
    assert LATENT_STD == (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )  # fmt: skip


def test_latent_normalisation_matches_fixture_and_round_trips(fx: dict[str, torch.Tensor]) -> None:
    # ComfyUI's Wan21 process_in / process_out: our op order makes these bit exact.
    assert torch.equal(normalize_latent(fx["encode.latent"]), fx["encode.latent_normalized"])
    assert torch.equal(denormalize_latent(fx["decode.latent_normalized"]), fx["decode.latent"])
    z = torch.randn(2, 16, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    assert _max_err(denormalize_latent(normalize_latent(z)), z) < 1e-6
    # Per-channel: channel 7 of a zero latent normalises to -mean/std.
    zn = normalize_latent(torch.zeros(1, 16, 1, 1, 1))
    assert zn[0, 7].item() == pytest.approx(-1.5508 / 2.0743, rel=1e-6)
    with pytest.raises(AnimaError):
        normalize_latent(torch.zeros(1, 4, 1, 2, 2))


# ---------------------------------------------------------------- fixture agreement


def test_decode_matches_fixture(vae: WanVAE, fx: dict[str, torch.Tensor]) -> None:
    with torch.inference_mode():
        x = vae.decode(fx["decode.latent"])
    assert x.shape == (1, 3, 128, 128)
    assert x.min() >= -1.0 and x.max() <= 1.0
    image = vae_output_to_image(x)
    err = _max_err(image, fx["decode.image"])
    assert err < ATOL, err


def test_decode_png_within_one_level(vae: WanVAE) -> None:
    fx = load_st(TINY / "components" / "vae.safetensors")
    with torch.inference_mode():
        image = vae_output_to_image(vae.decode(fx["decode.latent"]))[0].numpy()
    ours = np.floor(np.clip(255.0 * image, 0, 255)).astype(np.int16)
    png = np.asarray(Image.open(TINY / "components" / "vae_decode.png").convert("RGB")).astype(np.int16)
    assert ours.shape == png.shape
    assert np.abs(ours - png).max() <= 1


def test_encode_matches_fixture(vae: WanVAE, fx: dict[str, torch.Tensor]) -> None:
    # The fixture image is the PNG / 255: check that too, so the input convention is pinned.
    png = np.asarray(Image.open(TINY / "components" / "vae_encode_input.png").convert("RGB"))
    image = torch.from_numpy(png.astype(np.float32) / 255.0)[None]
    assert torch.equal(image, fx["encode.image"])
    with torch.inference_mode():
        z = vae.encode(image_to_vae_input(image))
    assert z.shape == (1, 16, 1, 16, 16)
    assert _max_err(z, fx["encode.latent"]) < ATOL
    assert _max_err(normalize_latent(z), fx["encode.latent_normalized"]) < ATOL


def test_encode_rejects_sizes_not_multiple_of_8(vae: WanVAE) -> None:
    with pytest.raises(AnimaError, match="multiple of 8"):
        vae.encode(torch.zeros(1, 3, 64, 60))
    with pytest.raises(AnimaError):
        vae.encode(torch.zeros(1, 64, 64, 3))  # channels-last image passed by mistake
    with pytest.raises(AnimaError):
        vae.decode(torch.zeros(1, 16, 2, 4, 4))  # two frames: not an image latent


# ---------------------------------------------------------------- 2-D path == 3-D causal reference


def _ref_conv(m: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
    """Causal 3-D conv as Wan defines it: 2*p_t zero frames in front, symmetric spatial padding."""
    kt, kh, kw = m.weight.shape[2:]
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, kt - 1, 0))
    return F.conv3d(x, m.weight, m.bias)


def _ref_norm(m: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    g = m.gamma.reshape(-1, *([1] * (x.ndim - 2)))
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12) * math.sqrt(x.shape[1]) * g


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


def _ref_res(m: ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    r = m.residual
    h = _ref_conv(r[2], F.silu(_ref_norm(r[0], x)))
    h = _ref_conv(r[6], F.silu(_ref_norm(r[3], h)))
    return h + (_ref_conv(m.shortcut, x) if isinstance(m.shortcut, CausalConv3d) else x)


def _ref_attn(m: AttentionBlock, x: torch.Tensor) -> torch.Tensor:
    def frame(f: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f.shape
        qkv = F.conv2d(_ref_norm(m.norm, f), m.to_qkv.weight, m.to_qkv.bias).flatten(2)
        q, k, v = qkv[:, :c], qkv[:, c : 2 * c], qkv[:, 2 * c :]
        a = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # [N, HW, HW]
        o = (v @ a.transpose(1, 2)).reshape(n, c, h, w)
        return f + F.conv2d(o, m.proj.weight, m.proj.bias)

    return _per_frame(frame, x)


def _ref_resample(m: Resample, x: torch.Tensor) -> torch.Tensor:
    conv = m.resample[1]
    if conv.stride == (2, 2):
        return _per_frame(lambda f: F.conv2d(F.pad(f, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2), x)
    # Upsample: nearest 2x, then the 3x3 conv. time_conv: skipped on the first chunk, as in Wan.
    up = lambda f: f.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # noqa: E731
    return _per_frame(lambda f: F.conv2d(up(f), conv.weight, conv.bias, padding=1), x)


def _ref_seq(layers, x: torch.Tensor) -> torch.Tensor:
    for m in layers:
        if isinstance(m, ResidualBlock):
            x = _ref_res(m, x)
        elif isinstance(m, AttentionBlock):
            x = _ref_attn(m, x)
        else:
            x = _ref_resample(m, x)
    return x


def _ref_encode(vae: WanVAE, x5: torch.Tensor) -> torch.Tensor:
    e = vae.encoder
    h = _ref_seq(e.middle, _ref_seq(e.downsamples, _ref_conv(e.conv1, x5)))
    h = _ref_conv(e.head[2], F.silu(_ref_norm(e.head[0], h)))
    return _ref_conv(vae.conv1, h)[:, : vae.cfg.z_dim]


def _ref_decode(vae: WanVAE, z5: torch.Tensor) -> torch.Tensor:
    d = vae.decoder
    h = _ref_seq(d.upsamples, _ref_seq(d.middle, _ref_conv(d.conv1, _ref_conv(vae.conv2, z5))))
    return _ref_conv(d.head[2], F.silu(_ref_norm(d.head[0], h))).clamp(-1, 1)


def _random_vae(cfg: VAEConfig, seed: int) -> WanVAE:
    vae = WanVAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * noise)
            else:  # fan-in over the taps a single frame actually uses, to keep activations O(1)
                p.copy_(noise / math.sqrt(p[0].numel() / (p.shape[2] if p.ndim == 5 else 1)))
    return vae.eval()


def test_2d_path_equals_3d_causal_reference() -> None:
    # Small non-default config (1 res block per level, different temporal flags) to exercise the
    # construction rules too; batch 2, non-square.
    cfg = VAEConfig(
        dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1, temporal_downsample=(True, False, True)
    )
    vae = _random_vae(cfg, seed=3)
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 32, 48, generator=gen) * 2 - 1
    z = torch.randn(2, 4, 1, 4, 6, generator=gen)
    with torch.inference_mode():
        enc, enc_ref = vae.encode(x), _ref_encode(vae, x[:, :, None])
        dec, dec_ref = vae.decode(z), _ref_decode(vae, z)[:, :, 0]
    assert enc.shape == enc_ref.shape == (2, 4, 1, 4, 6)
    assert dec.shape == dec_ref.shape == (2, 3, 32, 48)
    assert enc_ref.abs().max() > 0.1 and dec_ref.std() > 0.05  # non-degenerate
    assert _max_err(enc, enc_ref) < 1e-5
    assert _max_err(dec, dec_ref) < 1e-5


# ---------------------------------------------------------------- full-size structure


def test_full_config_builds_on_meta_with_spec_counts() -> None:
    with torch.device("meta"):
        vae = WanVAE(VAEConfig())
    sd = vae.state_dict()
    assert len(sd) == 194
    assert all(v.is_meta for v in sd.values())
    enc = sum(v.numel() for k, v in sd.items() if k.startswith(("encoder.", "conv1.")))
    dec = sum(v.numel() for k, v in sd.items() if k.startswith(("decoder.", "conv2.")))
    assert (enc, dec, enc + dec) == (53_596_928, 73_295_603, 126_892_531)
    # Spot-check spec §1.5 shapes of the official file.
    assert sd["encoder.conv1.weight"].shape == (96, 3, 3, 3, 3)
    assert sd["decoder.upsamples.3.time_conv.weight"].shape == (768, 384, 3, 1, 1)
    assert sd["decoder.upsamples.11.resample.1.weight"].shape == (96, 192, 3, 3)
    assert sd["encoder.middle.1.norm.gamma"].shape == (384, 1, 1)
    assert "decoder.upsamples.11.time_conv.weight" not in sd


def test_tiny_key_list_matches_module() -> None:
    lines = (TINY / "weights" / "keys_vae.txt").read_text().split("\n")
    want = {}
    for line in filter(None, lines):
        name, shape, _ = line.split("\t")
        want[name] = tuple(int(s) for s in shape.split("x"))
    with torch.device("meta"):
        vae = WanVAE(VAEConfig(dim=24))
    assert {k: tuple(v.shape) for k, v in vae.state_dict().items()} == want


# ---------------------------------------------------------------- tiled decode


@pytest.mark.slow
def test_decode_tiled_close_to_untiled(vae: WanVAE) -> None:
    # 1024x1024 image from a 128x128 latent; 3x3 tiles of 64 latents.
    z_norm = torch.randn(1, 16, 1, 128, 128, generator=torch.Generator().manual_seed(7))
    z = denormalize_latent(z_norm)
    with torch.inference_mode():
        t0 = time.perf_counter()
        full = vae.decode(z)
        t1 = time.perf_counter()
        tiled = vae.decode_tiled(z, tile_latent=64, overlap_latent=8)
        t2 = time.perf_counter()
    print(f"untiled {t1 - t0:.2f}s, tiled {t2 - t1:.2f}s")
    # Compare as [0, 1] images.
    diff = (full - tiled).abs() / 2
    err = diff.mean().item()
    print(f"tiled vs untiled: mean abs {err * 255:.3f}/255, max {diff.max().item() * 255:.1f}/255")
    assert err < 2 / 255
    # A single tile covering everything is exactly the untiled decode.
    small = z[..., :24, :32]
    with torch.inference_mode():
        assert torch.equal(vae.decode_tiled(small, tile_latent=64), vae.decode(small))
