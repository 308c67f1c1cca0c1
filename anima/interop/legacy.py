"""Recipes written before the typed recipe (``anima-recipe/1``): settings as A1111 text pairs.

Those PNGs stored every workflow setting in ``extra`` under its infotext label ("Hires upscale":
"1.5", "Step cache": "0.1"), and a grid sheet's cells in the same form. The labels never changed,
so reading them is the A1111 reader's job; this module only unpacks the old envelope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anima.errors import AnimaError
from anima.interop.a1111 import settings_from_pairs
from anima.recipe import Recipe

FORMAT_V1 = "anima-recipe/1"
_CORE = {
    "prompt", "negative_prompt", "width", "height", "steps", "cfg", "sampler", "scheduler", "shift",
    "seed", "batch_size", "denoise", "model", "model_hash", "dtype",
}  # fmt: skip


def recipe_from_v1(data: Mapping[str, Any]) -> Recipe:
    """An ``anima-recipe/1`` dict -> Recipe (types checked as the old reader checked them)."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT_V1:
        raise AnimaError(f"not an {FORMAT_V1} recipe")
    unknown = sorted(set(data) - _CORE - {"format", "loras", "extra"})
    if unknown:
        raise AnimaError(f"unknown recipe field {unknown[0]!r}")
    if "prompt" not in data:
        raise AnimaError("recipe field 'prompt' is missing")
    core = {k: data[k] for k in _CORE if k in data}
    v2 = {"format": "anima-recipe/2", **core, "loras": data.get("loras", [])}
    extra = data.get("extra", {})
    if not isinstance(extra, Mapping) or not all(isinstance(v, str) for v in (*extra, *extra.values())):
        raise AnimaError("recipe field 'extra' must map strings to strings")
    settings, rest = settings_from_pairs(extra, where="recipe")
    base = Recipe.from_dict(v2)
    try:
        return base.with_(**settings, extra=tuple(rest))
    except AnimaError as exc:
        raise AnimaError(f"recipe settings: {exc}", setting=exc.setting) from None


def recipe_from_data(data: Mapping[str, Any]) -> Recipe:
    """A recipe dict of any anima version (``anima-recipe/2``, or the older ``anima-recipe/1``)."""
    if isinstance(data, Mapping) and data.get("format") == FORMAT_V1:
        return recipe_from_v1(data)
    return Recipe.from_dict(data)
