"""The recipe's flat settings as a request model, generated from the recipe's own groups.

A job request carries its workflow settings as ``settings: {"hires_scale": 1.5, ...}``: the same
flat names the CLI flags, grid axes and the Python API use (`anima.recipe.SETTINGS`), typed from
the setting groups' own field types, so the OpenAPI contract cannot drift from the recipe. Range
checks stay the recipe's (one 400 line naming the setting). Settings a client must not choose are
left out: source image paths and file digests (the server stores uploads and hashes files itself),
the 8-bit weight format, its matmul and fp16 accumulation (how the server runs its model), the record-only
origin fields, and what only a ComfyUI graph sets (its picture preparation and text-encoder LoRAs).
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import ConfigDict, create_model

from anima.recipe import SETTINGS
from anima.recipe.settings import GROUPS

SERVER_ONLY = (
    "init_image", "init_image_hash", "mask", "mask_hash", "reference_image", "reference_image_hash",
    "hires_upscaler_hash", "weights", "weights_matmul", "fp16_accumulation",
)  # fmt: skip
RECORD_ONLY = ("wildcard_prompt", "wildcard_negative_prompt", "prompt_matrix", "training_step")
# How a ComfyUI graph prepared its pictures and its text-encoder LoRAs: a job gets them from its
# `graph` (the native API runs ComfyUI graphs), never as loose settings beside stored uploads.
GRAPH_ONLY = ("clip_loras", "init_resize", "mask_channel", "noise_mask")
CLIENT_SETTINGS = tuple(s for s in SETTINGS if s not in SERVER_ONLY + RECORD_ONLY + GRAPH_ONLY)


def _field_type(flat: str) -> Any:
    group, field = SETTINGS[flat]
    hint = typing.get_type_hints(GROUPS[group])[field]
    return hint | None  # omitted: the recipe default


SettingsIn = create_model(
    "SettingsIn",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Workflow settings by their flat names (see `anima.recipe.SETTINGS`); omitted ones are off.",
    **{name: (_field_type(name), None) for name in CLIENT_SETTINGS},
)
