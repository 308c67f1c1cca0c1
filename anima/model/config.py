"""Frozen configs for the four Anima components, inferred from checkpoint shapes.

Every size is read from the weights (never hard-coded), so the same code loads the official 2B
files, the community 40-block variant and the tiny test fixtures. `shapes` is a mapping from
*prefix-free* key names (``blocks.0.mlp.layer1.weight``, ``layers.0.self_attn.q_proj.weight``,
``decoder.head.0.gamma``) to shape tuples, so a config can be built from a safetensors header
alone, without reading tensor data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from anima.errors import AnimaError

Shapes = Mapping[str, tuple[int, ...]]


def _count_indexed(shapes: Shapes, prefix: str) -> int:
    """Number of distinct N in keys ``{prefix}N.*`` (N must be 0..count-1)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = {int(m.group(1)) for k in shapes if (m := pat.match(k))}
    if idx and idx != set(range(len(idx))):
        raise AnimaError(f"block indices under '{prefix}' are not contiguous: {sorted(idx)[:8]}...")
    return len(idx)


def _need(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise AnimaError(f"not a {what}: key '{key}' is missing")
    return tuple(shapes[key])


@dataclass(frozen=True)
class DiTConfig:
    """MiniTrainDIT (Cosmos-Predict2) with the Anima settings."""

    model_channels: int = 2048
    num_blocks: int = 28
    num_heads: int = 16
    head_dim: int = 128
    mlp_hidden: int = 8192
    adaln_lora_dim: int = 256
    crossattn_emb_channels: int = 1024
    in_channels: int = 16
    out_channels: int = 16
    patch_spatial: int = 2
    patch_temporal: int = 1
    rope_h_extrapolation_ratio: float = 4.0
    rope_w_extrapolation_ratio: float = 4.0
    rope_t_extrapolation_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.num_heads * self.head_dim != self.model_channels:
            raise AnimaError(
                f"DiT width {self.model_channels} is not heads {self.num_heads} x head dim {self.head_dim}"
            )
        if self.num_blocks < 1:
            raise AnimaError("DiT has no blocks")

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> DiTConfig:
        what = "Anima DiT"
        x_emb = _need(shapes, "x_embedder.proj.1.weight", what)
        width = x_emb[0]
        patch_in = x_emb[1]
        # 68 = (16 latent + 1 padding-mask channel) * 2 * 2
        in_channels = patch_in // 4 - 1
        head_dim = _need(shapes, "blocks.0.self_attn.q_norm.weight", what)[0]
        out_rows = _need(shapes, "final_layer.linear.weight", what)[0]
        return cls(
            model_channels=width,
            num_blocks=_count_indexed(shapes, "blocks."),
            num_heads=width // head_dim,
            head_dim=head_dim,
            mlp_hidden=_need(shapes, "blocks.0.mlp.layer1.weight", what)[0],
            adaln_lora_dim=_need(shapes, "blocks.0.adaln_modulation_self_attn.1.weight", what)[0],
            crossattn_emb_channels=_need(shapes, "blocks.0.cross_attn.k_proj.weight", what)[1],
            in_channels=in_channels,
            out_channels=out_rows // 4,
        )


@dataclass(frozen=True)
class AdapterConfig:
    """The 'LLM adapter': T5 ids cross-attending to Qwen3 states -> DiT context."""

    vocab_size: int = 32128
    source_dim: int = 1024
    target_dim: int = 1024
    model_dim: int = 1024
    num_layers: int = 6
    num_heads: int = 16
    head_dim: int = 64
    mlp_hidden: int = 4096
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.num_heads * self.head_dim != self.model_dim:
            raise AnimaError(
                f"adapter width {self.model_dim} is not heads {self.num_heads} x head dim {self.head_dim}"
            )
        if self.target_dim != self.model_dim:
            raise AnimaError("adapter with an input projection (target_dim != model_dim) is not supported")

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> AdapterConfig:
        """`shapes` keys are relative to the adapter (``embed.weight``, ``blocks.0...``)."""
        what = "Anima LLM adapter"
        embed = _need(shapes, "embed.weight", what)
        model_dim = _need(shapes, "blocks.0.self_attn.q_proj.weight", what)[0]
        head_dim = _need(shapes, "blocks.0.self_attn.q_norm.weight", what)[0]
        return cls(
            vocab_size=embed[0],
            source_dim=_need(shapes, "blocks.0.cross_attn.k_proj.weight", what)[1],
            target_dim=embed[1],
            model_dim=model_dim,
            num_layers=_count_indexed(shapes, "blocks."),
            num_heads=model_dim // head_dim,
            head_dim=head_dim,
            mlp_hidden=_need(shapes, "blocks.0.mlp.0.weight", what)[0],
        )


@dataclass(frozen=True)
class TextEncoderConfig:
    """Qwen3 (0.6B for the real model), used as a frozen feature extractor."""

    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_layers: int = 28
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise AnimaError(f"Qwen3 heads {self.num_heads} not a multiple of KV heads {self.num_kv_heads}")

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> TextEncoderConfig:
        """`shapes` keys are HF Qwen3Model names without ``model.`` (``layers.0...``)."""
        what = "Qwen3 text encoder"
        embed = _need(shapes, "embed_tokens.weight", what)
        # Qwen3's head dim is explicit (q_norm length), not hidden / heads.
        head_dim = _need(shapes, "layers.0.self_attn.q_norm.weight", what)[0]
        return cls(
            vocab_size=embed[0],
            hidden_size=embed[1],
            intermediate_size=_need(shapes, "layers.0.mlp.gate_proj.weight", what)[0],
            num_layers=_count_indexed(shapes, "layers."),
            num_heads=_need(shapes, "layers.0.self_attn.q_proj.weight", what)[0] // head_dim,
            num_kv_heads=_need(shapes, "layers.0.self_attn.k_proj.weight", what)[0] // head_dim,
            head_dim=head_dim,
        )


@dataclass(frozen=True)
class VAEConfig:
    """Wan-2.1 / Qwen-Image VAE (single-image path)."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @classmethod
    def from_shapes(cls, shapes: Shapes) -> VAEConfig:
        what = "Qwen-Image / Wan-2.1 VAE"
        dim = _need(shapes, "decoder.head.0.gamma", what)[0]
        z2 = _need(shapes, "conv1.weight", what)[0]
        return cls(dim=dim, z_dim=z2 // 2)


@dataclass(frozen=True)
class ModelSpec:
    """The three parts needed to generate: DiT (+ adapter, same file), text encoder, VAE."""

    dit: DiTConfig
    adapter: AdapterConfig
    text_encoder: TextEncoderConfig
    vae: VAEConfig
