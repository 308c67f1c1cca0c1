"""The recipe defaults a model asks for, where they differ from the official template's.

The official template's settings (1024x1024, 30 steps, CFG 4, er_sde + simple) are `Recipe`'s own
defaults. The bundled demo model knows only what it was trained on (64x64, 20 steps, no negative
prompt), and the turbo releases are made for CFG 1 at 8-12 steps (the model card); a front end
that shows defaults takes them from here, so a first click never starts a job the model cannot
use.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

# Model card, turbo releases: CFG 1 (no uncond pass), 8-12 steps; the negative prompt then acts
# through NAG (as `anima generate --preset turbo` does).
TURBO_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {"cfg": 1.0, "steps": 10, "sampler": "er_sde", "scheduler": "simple", "nag_scale": 5.0}
)


def is_turbo(name: str) -> bool:
    """A turbo release or finetune by its file name (anima-turbo-v1.0, ...-turbo-v1.1, ...)."""
    return "turbo" in name.lower()


def defaults_for(name: str, demo_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Recipe fields and flat settings for model `name`; `demo_defaults` when it is the demo."""
    if demo_defaults is not None:
        return dict(demo_defaults)
    if is_turbo(name):
        return dict(TURBO_DEFAULTS)
    return {}
