"""Key names of the diffusers-format Anima folders, as renames of the official (ComfyUI) names.

The official names are the source of truth (our modules are named after them). diffusers renames
them once, in `scripts/convert_anima_to_diffusers.py` (anima-spec §1.6); we only write that
forward direction. Reading a diffusers folder builds the inverse from the official key list of
the module being loaded, so there is no second, hand-written table to drift out of sync.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Order matters: each rule sees the output of the ones before it (anima-spec §1.6).
_DIT_RULES: tuple[tuple[str, str], ...] = (
    ("t_embedder.1", "time_embed.t_embedder"),
    ("t_embedding_norm", "time_embed.norm"),
    ("blocks", "transformer_blocks"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"),
    ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
    ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"),
    ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"),
    ("cross_attn", "attn2"),
    ("q_proj", "to_q"),
    ("k_proj", "to_k"),
    ("v_proj", "to_v"),
    ("output_proj", "to_out.0"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"),
    ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
)


def dit_to_diffusers(key: str) -> str:
    """Official DiT key (no ``net.`` prefix, no adapter) -> CosmosTransformer3DModel key."""
    for old, new in _DIT_RULES:
        key = key.replace(old, new)
    return key


_RES = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2"}
_UPSAMPLERS = {3, 7, 11}


def vae_to_diffusers(key: str) -> str:
    """Official Wan-2.1 VAE key -> AutoencoderKLQwenImage key."""
    if key.startswith("conv1."):
        return "quant_conv." + key[len("conv1.") :]
    if key.startswith("conv2."):
        return "post_quant_conv." + key[len("conv2.") :]
    key = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", key)
    key = re.sub(r"^encoder\.downsamples\.", "encoder.down_blocks.", key)

    def up(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n in _UPSAMPLERS:
            return f"decoder.up_blocks.{n // 4}.upsamplers.0."
        return f"decoder.up_blocks.{n // 4}.resnets.{n % 4}."

    key = re.sub(r"^decoder\.upsamples\.(\d+)\.", up, key)
    key = re.sub(r"\.middle\.0\.", ".mid_block.resnets.0.", key)
    key = re.sub(r"\.middle\.1\.", ".mid_block.attentions.0.", key)
    key = re.sub(r"\.middle\.2\.", ".mid_block.resnets.1.", key)
    key = re.sub(r"\.head\.0\.", ".norm_out.", key)
    key = re.sub(r"\.head\.2\.", ".conv_out.", key)
    for old, new in _RES.items():
        key = key.replace(f".{old}.", f".{new}.")
    return key.replace(".shortcut.", ".conv_shortcut.")


def inverse(official_keys: Iterable[str], rename) -> dict[str, str]:
    """diffusers name -> official name, for exactly the keys a module expects."""
    out: dict[str, str] = {}
    for k in official_keys:
        d = rename(k)
        if d in out:
            raise ValueError(f"diffusers rename is not one-to-one: {k} and {out[d]} -> {d}")
        out[d] = k
    return out
