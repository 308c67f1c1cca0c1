"""What a checkpoint file is, from its key names alone (a header read, no tensor data).

Users drop files into the wrong slot all the time (a VAE passed as the DiT, an SDXL VAE, a LoRA as
a model). Recognising every layout we know lets each loader say *what the file looks like
instead*, in one line, rather than dumping a key-mismatch traceback.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# Prefixes of the DiT keys seen in the wild (anima-spec §1.2): official, ComfyUI full checkpoints, bare.
DIT_PREFIXES = ("net.", "model.diffusion_model.", "diffusion_model.", "")
TE_PREFIXES = ("model.", "qwen3_06b.transformer.model.", "text_encoders.qwen3_06b.transformer.model.", "")

DIT = "dit"
DIT_DIFFUSERS = "dit_diffusers"
ADAPTER = "adapter"
TEXT_ENCODER = "text_encoder"
VAE = "vae"
VAE_DIFFUSERS = "vae_diffusers"
LORA = "lora"
LLLITE = "lllite"
COSMOS_NO_ADAPTER = "cosmos_without_adapter"
OTHER_VAE = "other_vae"
UNKNOWN = "unknown"

DESCRIPTIONS = {
    DIT: "an Anima DiT (diffusion model) file",
    DIT_DIFFUSERS: "an Anima DiT in diffusers layout (transformer/)",
    ADAPTER: "an Anima LLM adapter (text_conditioner/)",
    TEXT_ENCODER: "a Qwen3 text encoder file",
    VAE: "a Qwen-Image / Wan-2.1 VAE file",
    VAE_DIFFUSERS: "a Qwen-Image VAE in diffusers layout (vae/)",
    LORA: "a LoRA / LyCORIS file",
    LLLITE: "an Anima ControlNet-LLLite patch",
    COSMOS_NO_ADAPTER: "a Cosmos-Predict2 DiT without the Anima LLM adapter (not an Anima model)",
    OTHER_VAE: "a VAE of another architecture (SD/SDXL/Flux style); Anima needs the Qwen-Image VAE",
    UNKNOWN: "not a model file anima recognises",
}


@dataclass(frozen=True)
class Kind:
    kind: str
    prefix: str = ""

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.kind]


def detect(keys: Collection[str]) -> Kind:
    """Classify a checkpoint by its key names."""
    keys = set(keys)
    if "lllite_conditioning1.conv1.weight" in keys or any(k.startswith("lllite_modules.") for k in keys):
        return Kind(LLLITE)  # before the LoRA rule: a patch is no LoRA, whatever its key names hold
    if any(("lora_" in k or ".hada_" in k or ".lokr_" in k) for k in list(keys)[:2000]):
        return Kind(LORA)
    for p in DIT_PREFIXES:
        if f"{p}blocks.0.mlp.layer1.weight" in keys and f"{p}x_embedder.proj.1.weight" in keys:
            if f"{p}llm_adapter.out_proj.weight" in keys:
                return Kind(DIT, p)
            return Kind(COSMOS_NO_ADAPTER, p)
    if "transformer_blocks.0.ff.net.0.proj.weight" in keys and "patch_embed.proj.weight" in keys:
        return Kind(DIT_DIFFUSERS)
    if "embed.weight" in keys and "blocks.0.cross_attn.q_proj.weight" in keys and "out_proj.weight" in keys:
        return Kind(ADAPTER)
    for p in TE_PREFIXES:
        if f"{p}layers.0.self_attn.q_norm.weight" in keys and f"{p}embed_tokens.weight" in keys:
            return Kind(TEXT_ENCODER, p)
    if "decoder.head.0.gamma" in keys and "conv2.weight" in keys:
        return Kind(VAE)
    if "decoder.norm_out.gamma" in keys and "post_quant_conv.weight" in keys:
        return Kind(VAE_DIFFUSERS)
    if any(k.endswith("decoder.conv_in.weight") for k in keys):
        return Kind(OTHER_VAE)
    return Kind(UNKNOWN)
