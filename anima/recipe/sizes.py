"""Image sizes a recipe accepts, the named presets, and ``WIDTHxHEIGHT`` text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from anima.errors import AnimaError
from anima.recipe.checks import is_int

MIN_SIZE = 16
MAX_SIZE = 8192
# The VAE's factor. The DiT's 2x2 patches would want 16, but it pads an odd latent circularly to
# its patch size and crops the output back, as ComfyUI does, so any multiple of 8 is a valid size
# (1080x1920 as well as 1216x832) and gives ComfyUI's image.
SIZE_MULTIPLE = 8

# Named aspect presets near 1 MP (the training resolution of every Anima release).
# Read-only so that no caller can change a preset for everyone else.
SIZE_PRESETS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "square": (1024, 1024),
        "portrait": (896, 1152),
        "landscape": (1152, 896),
        "tall": (832, 1216),
        "wide": (1216, 832),
        "phone": (768, 1344),
        "cinema": (1344, 768),
    }
)


def nearest_valid_size(value: int) -> int:
    """The multiple of 8 closest to `value` (ties go up), clamped to the allowed range."""
    snapped = (int(value) + SIZE_MULTIPLE // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE
    return min(max(snapped, MIN_SIZE), MAX_SIZE)


def check_size(what: str, value: Any) -> int:
    if not is_int(value):
        raise AnimaError(f"{what} must be an integer, got {value!r}", setting=what)
    if value < MIN_SIZE or value > MAX_SIZE:
        raise AnimaError(f"{what} {value} is outside {MIN_SIZE}..{MAX_SIZE}", setting=what)
    if value % SIZE_MULTIPLE:
        raise AnimaError(
            f"{what} {value} is not a multiple of {SIZE_MULTIPLE}; "
            f"the nearest valid {what} is {nearest_valid_size(value)}",
            setting=what,
        )
    return value


def parse_size(text: str) -> tuple[int, int]:
    """A size as users write it: a preset name (``portrait``) or ``WIDTHxHEIGHT`` -> (width, height)."""
    spec = text.strip().lower()
    if spec in SIZE_PRESETS:
        return SIZE_PRESETS[spec]
    m = re.fullmatch(r"(\d+)\s*[x×*]\s*(\d+)", spec)
    if not m:
        names = ", ".join(f"{k} ({w}x{h})" for k, (w, h) in SIZE_PRESETS.items())
        raise AnimaError(f"size {text!r} is neither WIDTHxHEIGHT nor a preset: {names}")
    return check_size("width", int(m.group(1))), check_size("height", int(m.group(2)))
