"""Write a diffusers-format Anima folder from the three official files.

The same layout `scripts/convert_anima_to_diffusers.py --save_pipeline` produces (anima-spec §1.6):
transformer/, text_conditioner/, text_encoder/, tokenizer/, t5_tokenizer/, vae/, scheduler/ and a
model_index.json naming the diffusers/transformers classes, so both `Pipeline.from_pretrained` and
diffusers' `AnimaModularPipeline.from_pretrained` read it. diffusers is not needed to write it: the
config files are plain JSON with the constructor arguments those classes take.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from anima.errors import AnimaError
from anima.model.config import AdapterConfig, DiTConfig, TextEncoderConfig, VAEConfig
from anima.model.latent import LATENT_MEAN, LATENT_STD
from anima.model.text_encoder import qwen3_config
from anima.weights import diffusers_keys, file_kinds
from anima.weights.loading import read_headers
from anima.weights.safetensors import load_mmap, save

DIFFUSERS_VERSION = "0.42.1"


def _cls(name: str) -> dict:
    return {"_class_name": name, "_diffusers_version": DIFFUSERS_VERSION}


def transformer_config(c: DiTConfig) -> dict:
    return {
        **_cls("CosmosTransformer3DModel"),
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "num_attention_heads": c.num_heads,
        "attention_head_dim": c.head_dim,
        "num_layers": c.num_blocks,
        "mlp_ratio": c.mlp_hidden / c.model_channels,
        "text_embed_dim": c.crossattn_emb_channels,
        "adaln_lora_dim": c.adaln_lora_dim,
        "max_size": [128, 240, 240],
        "patch_size": [c.patch_temporal, c.patch_spatial, c.patch_spatial],
        "rope_scale": [
            c.rope_t_extrapolation_ratio,
            c.rope_h_extrapolation_ratio,
            c.rope_w_extrapolation_ratio,
        ],
        "concat_padding_mask": True,
        "extra_pos_embed_type": None,
    }


def conditioner_config(c: AdapterConfig) -> dict:
    return {
        **_cls("AnimaTextConditioner"),
        "source_dim": c.source_dim,
        "target_dim": c.target_dim,
        "model_dim": c.model_dim,
        "num_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "mlp_ratio": c.mlp_hidden / c.model_dim,
        "target_vocab_size": c.vocab_size,
        "use_self_attention": True,
        "use_layer_norm": False,
        "min_sequence_length": 512,
    }


def vae_config(c: VAEConfig) -> dict:
    return {
        **_cls("AutoencoderKLQwenImage"),
        "base_dim": c.dim,
        "z_dim": c.z_dim,
        "dim_mult": list(c.dim_mult),
        "num_res_blocks": c.num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": list(c.temporal_downsample),
        "dropout": 0.0,
        "latents_mean": list(LATENT_MEAN),
        "latents_std": list(LATENT_STD),
    }


def _write_component(out: Path, config: dict, tensors: dict, weights_name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save(tensors, out / weights_name, metadata={"format": "pt"})


def export_diffusers(
    dit: str | Path,
    text_encoder: str | Path,
    vae: str | Path,
    qwen_tokenizer: str | Path,
    t5_tokenizer: str | Path,
    out_dir: str | Path,
) -> Path:
    """Convert the official files (and the two tokenizer folders) into a diffusers folder."""

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise AnimaError(f"{out}: folder exists and is not empty")
    headers, shapes = read_headers(Path(dit))
    kind = file_kinds.detect(shapes)
    if kind.kind != file_kinds.DIT:
        raise AnimaError(f"{dit}: expected an Anima DiT file, but this looks like {kind.description}")
    sd = {}
    for h in headers:
        sd.update(load_mmap(h.path, h))
    p, ap = kind.prefix, kind.prefix + "llm_adapter."
    dit_sd = {k[len(p) :]: v for k, v in sd.items() if not k.startswith(ap)}
    ad_sd = {k[len(ap) :]: v for k, v in sd.items() if k.startswith(ap)}
    dit_cfg = DiTConfig.from_shapes({k: tuple(v.shape) for k, v in dit_sd.items()})
    ad_cfg = AdapterConfig.from_shapes({k: tuple(v.shape) for k, v in ad_sd.items()})
    _write_component(
        out / "transformer",
        transformer_config(dit_cfg),
        {diffusers_keys.dit_to_diffusers(k): v for k, v in dit_sd.items()},
        "diffusion_pytorch_model.safetensors",
    )
    _write_component(
        out / "text_conditioner", conditioner_config(ad_cfg), ad_sd, "diffusion_pytorch_model.safetensors"
    )

    te_headers, te_shapes = read_headers(Path(text_encoder))
    te_kind = file_kinds.detect(te_shapes)
    if te_kind.kind != file_kinds.TEXT_ENCODER:
        raise AnimaError(
            f"{text_encoder}: expected a Qwen3 text encoder, but this looks like {te_kind.description}"
        )
    te_sd = {}
    for h in te_headers:
        te_sd.update({k[len(te_kind.prefix) :]: v for k, v in load_mmap(h.path, h).items()})
    te_cfg = TextEncoderConfig.from_shapes({k: tuple(v.shape) for k, v in te_sd.items()})
    hf = qwen3_config(te_cfg).to_dict()
    hf["architectures"] = ["Qwen3Model"]
    hf["torch_dtype"] = "bfloat16"
    _write_component(out / "text_encoder", hf, te_sd, "model.safetensors")

    v_headers, v_shapes = read_headers(Path(vae))
    if file_kinds.detect(v_shapes).kind != file_kinds.VAE:
        raise AnimaError(f"{vae}: expected the Qwen-Image VAE (official Wan-2.1 key names)")
    v_sd = {}
    for h in v_headers:
        v_sd.update(load_mmap(h.path, h))
    _write_component(
        out / "vae",
        vae_config(VAEConfig.from_shapes(v_shapes)),
        {diffusers_keys.vae_to_diffusers(k): v for k, v in v_sd.items()},
        "diffusion_pytorch_model.safetensors",
    )

    shutil.copytree(qwen_tokenizer, out / "tokenizer")
    shutil.copytree(t5_tokenizer, out / "t5_tokenizer")
    (out / "scheduler").mkdir()
    (out / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {**_cls("FlowMatchEulerDiscreteScheduler"), "num_train_timesteps": 1000, "shift": 3.0}, indent=2
        )
    )
    index = {
        **_cls("AnimaModularPipeline"),
        "transformer": ["diffusers", "CosmosTransformer3DModel"],
        "text_conditioner": ["diffusers", "AnimaTextConditioner"],
        "text_encoder": ["transformers", "Qwen3Model"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "t5_tokenizer": ["transformers", "T5TokenizerFast"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
