"""The recipe: every setting that determines an image, as one frozen, validated value."""

from anima.recipe.codec import FORMAT as RECIPE_FORMAT
from anima.recipe.control import ControlUnit
from anima.recipe.core import DEFAULT_NEGATIVE, DTYPES, SETTING_DEFAULTS, SETTINGS, Recipe, changed_settings
from anima.recipe.regions import Region
from anima.recipe.settings import (
    HIRES_UPSCALERS,
    INPAINT_AREAS,
    MAX_SEED,
    REGION_OVERLAPS,
    TILED_VAE_MODES,
    WEIGHT_FORMATS,
    Advanced,
    ComfyNodes,
    GridAxis,
    Guidance,
    Hires,
    Inpaint,
    Nag,
    Origin,
    Perf,
    Reference,
    Regional,
    Sources,
    Variation,
)
from anima.recipe.sizes import MAX_SIZE, MIN_SIZE, SIZE_MULTIPLE, SIZE_PRESETS, nearest_valid_size, parse_size

__all__ = [
    "DEFAULT_NEGATIVE", "DTYPES", "HIRES_UPSCALERS", "INPAINT_AREAS", "MAX_SEED", "MAX_SIZE", "MIN_SIZE",
    "RECIPE_FORMAT", "REGION_OVERLAPS", "SETTING_DEFAULTS", "SETTINGS", "SIZE_MULTIPLE", "SIZE_PRESETS",
    "TILED_VAE_MODES", "WEIGHT_FORMATS", "Advanced", "ComfyNodes", "ControlUnit", "GridAxis", "Guidance",
    "Hires", "Inpaint", "Nag", "Origin", "Perf", "Recipe", "Reference", "Region", "Regional", "Sources",
    "Variation", "changed_settings",
    "nearest_valid_size", "parse_size",
]  # fmt: skip
