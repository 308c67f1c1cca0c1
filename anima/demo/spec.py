"""Sizes and starting weights of the DEMO model (tiny Anima architecture, trained from scratch).

The four parts have the real architecture and key names, only narrower and shallower, so the
ordinary loaders read them (configs inferred from shapes) and every tool treats them like a real
Anima model. Vocabulary sizes come from the demo tokenizers.

Why these sizes: 64x64 images give an 8x8 latent and a 4x4 token grid. The heads are 64 wide (two
per block) rather than 32 because the DiT's 3-D RoPE gives each spatial axis head_dim // 6 * 2
channels with NTK-stretched frequencies: at 32 only one rotation frequency per axis is useful on a
4-token grid, at 64 there are two to three. The context width (64) is the adapter's width.

Initialisation for training from scratch (written to files so the trainer loads them like any base):

- DiT: adaLN-Zero (the second linear of every AdaLN modulation and the final projection start at
  zero, so every block starts as the identity and the model predicts v = 0); other linears
  N(0, 1/fan_in); norms 1, except the cross-attention q/k norms at 2.5, which lets the few prompt
  tokens compete with the ~500 zero padding rows from the first step (the same reason the
  tiny fixture scales them).
- Adapter: embeddings N(0, 1), linears N(0, 1/fan_in), biases 0, norms 1.
- Text encoder: the same random init, and it stays frozen: a random causal transformer already
  gives every token sequence distinct features, and the adapter's own T5-id embedding carries token
  identity, so the demo does not train it (the real Anima also keeps its Qwen3 frozen).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from anima.model.config import AdapterConfig, DiTConfig, ModelSpec, TextEncoderConfig, VAEConfig
from anima.weights.random import official_shapes
from anima.weights.safetensors import save

IMAGE_SIZE = 64
CROSS_NORM_INIT = 2.5


def dit_config() -> DiTConfig:
    return DiTConfig(
        model_channels=128,
        num_blocks=4,
        num_heads=2,
        head_dim=64,
        mlp_hidden=512,
        adaln_lora_dim=32,
        crossattn_emb_channels=64,
    )


def adapter_config(t5_vocab: int) -> AdapterConfig:
    return AdapterConfig(
        vocab_size=t5_vocab,
        source_dim=64,
        target_dim=64,
        model_dim=64,
        num_layers=2,
        num_heads=2,
        head_dim=32,
        mlp_hidden=256,
    )


def text_encoder_config(qwen_vocab: int) -> TextEncoderConfig:
    return TextEncoderConfig(
        vocab_size=qwen_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=32,
    )


def vae_config(dim: int = 8) -> VAEConfig:
    return VAEConfig(dim=dim)


def _init(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    leaf = name.rsplit(".", 1)[-1]
    parent = name.rsplit(".", 2)[-2] if name.count(".") >= 2 else ""
    if len(shape) == 1 and leaf == "weight" and "norm" in name:
        if (
            ".cross_attn." in name
            and parent in ("q_norm", "k_norm")
            and not name.startswith("net.llm_adapter")
        ):
            return torch.full(shape, CROSS_NORM_INIT)
        return torch.ones(shape)
    if leaf == "bias":
        return torch.zeros(shape)
    if "embed" in name and "embedder" not in name and len(shape) == 2 and "proj" not in name:
        return torch.randn(shape, generator=g)  # token embeddings
    zero = (
        ".adaln_modulation" in name and name.endswith(".2.weight")
    ) or name == "net.final_layer.linear.weight"
    if zero:
        return torch.zeros(shape)
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


def write_initial(out_dir: str | Path, qwen_vocab: int, t5_vocab: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the starting DiT (+ adapter) and the (final, frozen) text encoder; returns their paths."""

    out = Path(out_dir)
    spec = _spec(qwen_vocab, t5_vocab)
    shapes = official_shapes(spec)
    paths = []
    for i, (part, name) in enumerate(
        (("dit", "init-dit.safetensors"), ("text_encoder", "anima-demo-te.safetensors"))
    ):
        g = torch.Generator().manual_seed(seed * 1000 + i)
        tensors = {k: _init(k, s, g) for k, s in sorted(shapes[part].items())}
        path = out / name
        save(
            tensors,
            path,
            metadata={
                "format": "pt",
                "anima_demo": "tiny DEMO model trained on coloured shapes (anima.demo); not Anima",
            },
        )
        paths.append(path)
    return paths[0], paths[1]


def _spec(qwen_vocab: int, t5_vocab: int):

    return ModelSpec(
        dit=dit_config(),
        adapter=adapter_config(t5_vocab),
        text_encoder=text_encoder_config(qwen_vocab),
        vae=vae_config(),
    )
