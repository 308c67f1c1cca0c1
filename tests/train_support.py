"""Helpers for the training tests: a tiny model (demo sizes, random weights) and a tiny dataset.

Everything is built in a temporary folder in about a second: the demo tokenizers, the demo text
encoder and starting DiT (`anima.demo.spec`), a random width-8 VAE and a few rendered shape images.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def make_tiny(
    root: Path, n_images: int = 8, extra_sizes: tuple[tuple[int, int], ...] = ()
) -> dict[str, Path]:
    """Model files, tokenizers and a dataset under `root`; returns their paths by TrainConfig field."""
    from anima.demo import dataset
    from anima.demo.spec import write_initial
    from anima.demo.tokenizer_train import train_tokenizers
    from anima.demo.vae_train import init_vae
    from anima.model.config import VAEConfig
    from anima.text.tokenize import AnimaTokenizer
    from anima.weights.safetensors import save

    root.mkdir(parents=True, exist_ok=True)
    tok_dir = root / "tokenizer"
    train_tokenizers(dataset.vocabulary_text(), tok_dir)
    tok = AnimaTokenizer.from_dirs(tok_dir / "qwen", tok_dir / "t5")
    dit, te = write_initial(root, tok._qwen.get_vocab_size(), tok._t5.get_vocab_size(), seed=0)
    _wake_up(dit)
    vae = root / "vae.safetensors"
    save(init_vae(VAEConfig(dim=8), seed=0).state_dict(), vae)
    data = root / "data"
    train, _ = dataset.split_combos()
    dataset.write_dataset(data, train[:: max(len(train) // n_images, 1)][:n_images], per_combo=1, seed=0)
    rng = random.Random(0)
    for i, (w, h) in enumerate(extra_sizes):
        scene = dataset.random_scene(train[i], rng)
        dataset.render(scene, 64).resize((w, h)).save(data / f"wide{i}.png")
        (data / f"wide{i}.txt").write_text(dataset.tag_caption(scene), encoding="utf-8")
    return {"dit": dit, "text_encoder": te, "vae": vae, "tokenizer_dir": tok_dir, "data_dir": data}


def _wake_up(dit: Path) -> None:
    """Give the zero-initialised (adaLN-Zero) tensors small random values: a from-scratch DiT passes no
    gradient to its blocks at step 0, so LoRA factors there would never move and tests comparing
    them would compare zeros."""
    from anima.weights.safetensors import save

    g = torch.Generator().manual_seed(1)
    tensors = {k: v.clone() for k, v in load_tensors(dit).items()}
    for k, v in tensors.items():
        if v.ndim == 2 and not v.any():
            tensors[k] = 0.05 * torch.randn(v.shape, generator=g)
    save(tensors, dit)


def tiny_config(files: dict[str, Path], out: Path, **overrides):
    from anima.train.config import TrainConfig

    values = dict(
        resolution=64,
        bucket_step=16,
        steps=4,
        batch_size=2,
        lr=1e-3,
        precision="fp32",
        device="cpu",
        threads=1,
        log_every=1,
        log_backend="csv",
        output_dir=str(out),
        cache_dir=str(out / "cache"),
        network="lora",
        rank=4,
    )
    values.update({k: str(v) for k, v in files.items()})
    values.update(overrides)
    return TrainConfig(**values)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
