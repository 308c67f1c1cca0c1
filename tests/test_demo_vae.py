"""The demo VAE trainer: position code, decoder blind to it, exact calibration fold."""

from __future__ import annotations

import numpy as np
import torch

from anima.config import VAEConfig
from anima.demo import dataset
from anima.demo.vae_train import VAETrainConfig, calibrate, init_vae, latent_stats, position_code, train_vae
from anima.latent import LATENT_MEAN, LATENT_STD


def _images(n: int = 6) -> torch.Tensor:
    combos = dataset.split_combos()[0][:n]
    return torch.from_numpy(
        np.stack([np.asarray(dataset.render(s)) for s, _ in dataset.scenes(combos, 1, 0)])
    )


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


def test_training_keeps_the_decoder_blind_to_the_code() -> None:
    images = _images()
    vae = train_vae(images, VAETrainConfig(dim=8, steps=3, batch_size=2))
    assert not vae.conv2.weight[:, :2].any()
    x = images[:2].permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x)
        z2 = z.clone()
        z2[:, :2] = torch.randn_like(z2[:, :2])
        assert torch.equal(vae.decode(z), vae.decode(z2))
