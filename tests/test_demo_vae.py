"""The demo VAE trainer: position code, decoder blind to it, exact calibration fold."""

from __future__ import annotations

from dataclasses import replace

import torch

from anima.demo import dataset
from anima.demo.vae_train import (
    VAETrainConfig,
    calibrate,
    init_vae,
    latent_stats,
    polish_decoder,
    position_code,
    train_vae,
)
from anima.model.config import VAEConfig
from anima.model.latent import LATENT_MEAN, LATENT_STD


def _images(n: int = 6) -> torch.Tensor:
    combos = dataset.split_combos()[0][:n]
    return dataset.render_batch(dataset.scenes(combos, 1, 0))


def test_position_code_is_a_unit_coordinate_grid() -> None:
    code = position_code((8, 8))
    assert code.shape == (2, 8, 8)
    assert torch.allclose(code.std(dim=(1, 2)), torch.ones(2))
    assert torch.all(code[0, :, 1:] > code[0, :, :-1]) and torch.all(code[1, 1:] > code[1, :-1])


def test_calibration_is_an_exact_reparametrisation() -> None:
    torch.manual_seed(0)
    vae = init_vae(VAEConfig(dim=8), seed=0).eval()
    images = _images()
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x))
        calibrate(vae, images)
        after = vae.decode(vae.encode(x))
        mean, std = latent_stats(vae, images)
    assert (before - after).abs().max() < 1e-4
    assert torch.allclose(mean, torch.tensor(LATENT_MEAN), atol=1e-4)
    assert torch.allclose(std, torch.tensor(LATENT_STD), rtol=1e-4)


def _assert_blind_to_the_code(vae, images: torch.Tensor) -> None:
    assert not vae.conv2.weight[:, :2].any()
    x = images[:2].permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x)
        z2 = z.clone()
        z2[:, :2] = torch.randn_like(z2[:, :2])
        assert torch.equal(vae.decode(z), vae.decode(z2))


def test_training_keeps_the_decoder_blind_to_the_code() -> None:
    images = _images()
    cfg = VAETrainConfig(dim=8, steps=3, batch_size=2, decoder_steps=3, decoder_batch=2)
    vae = train_vae(images, cfg)
    _assert_blind_to_the_code(vae, images)
    # The decoder-only phase keeps it blind and leaves the encoder (the DiT's latents) untouched.
    encoder = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "conv2."))}
    decoder = vae.decoder.state_dict()["head.2.weight"].clone()
    polish_decoder(vae, images, replace(cfg, decoder_lr=1e-2))
    _assert_blind_to_the_code(vae, images)
    assert all(torch.equal(v, vae.state_dict()[k]) for k, v in encoder.items())
    assert not torch.equal(decoder, vae.decoder.state_dict()["head.2.weight"])
