"""ComfyUI's single-file Anima checkpoints (what ``CheckpointLoaderSimple`` loads): the DiT, the text
encoder and the VAE in one safetensors file, each under the prefix ComfyUI saves it with
(``comfy.supported_models_base``: the model under ``model.diffusion_model.``, the text encoder
under ``cond_stage_model.`` followed by its own names, ``qwen3_06b.transformer.model.`` for Anima,
the VAE under ``first_stage_model.``). The loaders take such a file for any of the three parts and
read only their part (`part_prefix`).
"""

from __future__ import annotations

from collections.abc import Collection

PREFIXES = {
    "dit": "model.diffusion_model.",
    "text_encoder": "cond_stage_model.qwen3_06b.transformer.model.",
    "vae": "first_stage_model.",
}
_PROBES = {
    "dit": "blocks.0.mlp.layer1.weight",
    "text_encoder": "embed_tokens.weight",
    "vae": "decoder.head.0.gamma",
}


def is_checkpoint(keys: Collection[str]) -> bool:
    """Whether the keys hold all three parts of an Anima checkpoint."""
    keys = set(keys)
    return all(PREFIXES[p] + _PROBES[p] in keys for p in PREFIXES)


def part_prefix(keys: Collection[str], part: str) -> str | None:
    """The prefix of `part` ("dit", "text_encoder", "vae") in a full checkpoint, else None."""
    return PREFIXES[part] if is_checkpoint(keys) else None
