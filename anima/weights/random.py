"""Random-weight checkpoints in the official file layout (tests, benchmarks, first-run demo).

The names and shapes come from building our own modules on the meta device, so a file written
here loads through exactly the same strict path as a real release. The init is chosen so that a
random model stays numerically tame (finite activations through every block), not to look good.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.model.adapter import LLMAdapter
from anima.model.config import AdapterConfig, DiTConfig, ModelSpec, TextEncoderConfig, VAEConfig
from anima.model.dit import MiniTrainDIT
from anima.model.text_encoder import Qwen3TextEncoder
from anima.model.vae import WanVAE
from anima.weights.safetensors import save

TINY = ModelSpec(
    dit=DiTConfig(
        model_channels=256, num_blocks=2, num_heads=2, head_dim=128, mlp_hidden=1024,
        adaln_lora_dim=32, crossattn_emb_channels=128,
    ),
    adapter=AdapterConfig(
        source_dim=64, target_dim=128, model_dim=128, num_layers=2, num_heads=2, head_dim=64, mlp_hidden=512
    ),
    text_encoder=TextEncoderConfig(
        hidden_size=64, intermediate_size=192, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=64
    ),
    vae=VAEConfig(dim=24),
)  # fmt: skip
FULL = ModelSpec(dit=DiTConfig(), adapter=AdapterConfig(), text_encoder=TextEncoderConfig(), vae=VAEConfig())
PRESETS = {"tiny": TINY, "full": FULL}

FILE_NAMES = {
    "dit": "anima-random-{preset}.safetensors",
    "text_encoder": "qwen3-random-{preset}.safetensors",
    "vae": "qwen-image-vae-random-{preset}.safetensors",
}


@dataclass(frozen=True)
class RandomFiles:
    dit: Path
    text_encoder: Path
    vae: Path


def official_shapes(spec: ModelSpec) -> dict[str, dict[str, tuple[int, ...]]]:
    """File key -> shape for the three official files of `spec`."""

    with torch.device("meta"):
        dit = MiniTrainDIT(spec.dit).state_dict()
        ad = LLMAdapter(spec.adapter).state_dict()
        te = Qwen3TextEncoder(spec.text_encoder).state_dict()
        vae = WanVAE(spec.vae).state_dict()
    te_prefix = next(k for k in te if k.endswith("embed_tokens.weight"))[: -len("embed_tokens.weight")]
    return {
        "dit": {**{f"net.{k}": tuple(v.shape) for k, v in dit.items()},
                **{f"net.llm_adapter.{k}": tuple(v.shape) for k, v in ad.items()}},
        "text_encoder": {"model." + k[len(te_prefix):]: tuple(v.shape) for k, v in te.items()},
        "vae": {k: tuple(v.shape) for k, v in vae.items()},
    }  # fmt: skip


def _init(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=g)
    leaf = name.rsplit(".", 2)[-2] if name.count(".") else name
    if name.endswith("gamma") or (name.endswith(".weight") and len(shape) == 1):
        return 1.0 + 0.1 * x  # norm scales
    if name.endswith(".bias"):
        return 0.02 * x
    if "embed" in leaf and len(shape) == 2 and "embedder" not in name:
        return x  # token embeddings
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return x / math.sqrt(fan_in)


def make_random(preset: str, out_dir: str | Path, *, seed: int = 0) -> RandomFiles:
    """Write the DiT, text-encoder and VAE files of a preset into `out_dir` (bf16, official keys)."""
    if preset not in PRESETS:
        raise AnimaError(f"unknown preset '{preset}'; choose from {', '.join(PRESETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = official_shapes(PRESETS[preset])
    paths = {}
    for i, (part, keys) in enumerate(shapes.items()):
        g = torch.Generator().manual_seed(seed + i)
        tensors = {k: _init(k, s, g).to(torch.bfloat16) for k, s in sorted(keys.items())}
        path = out_dir / FILE_NAMES[part].format(preset=preset)
        save(tensors, path, metadata={"format": "pt", "anima_random_preset": preset})
        paths[part] = path
        del tensors
    return RandomFiles(**paths)
