"""Workflow options: a typed, validated view of the ``Recipe.extra`` pairs a PNG records.

Every workflow setting lives in ``Recipe.extra`` as an A1111-style ``"Key: value"`` pair (so PNG
Info readers show it) and is read back through `Workflow`. Only values that differ from the
defaults are written, so a plain text-to-image recipe carries no extra pairs at all. Keys follow
A1111's names where A1111 has the setting (``Hires upscale``, ``Variation seed``, ``Mask blur``).

Unknown extra keys are left alone (other modules and A1111 imports put their own there).
No torch here: this is parsed at the edges, before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any

from anima.errors import AnimaError

GUIDANCES = ("cfg", "cfg-zero-star", "apg", "rescale-cfg")
HIRES_UPSCALERS = ("latent-bislerp", "latent-nearest-exact", "latent-bilinear", "lanczos")
TILED_VAE_MODES = ("auto", "on", "off")
INPAINT_AREAS = ("whole", "only masked")
MAX_SEED = 2**64 - 1

# A1111 labels for its built-in upscalers -> ours (so imported infotexts keep working).
_A1111_UPSCALERS = {
    "latent": "latent-bilinear",
    "latent (nearest-exact)": "latent-nearest-exact",
    "latent (nearest)": "latent-nearest-exact",
    "lanczos": "lanczos",
}


@dataclass(frozen=True)
class Workflow:
    """All workflow options of one recipe. Defaults mean "off" / "as the main pass"."""

    # guidance (see anima.guidance)
    guidance: str = "cfg"
    cfg_rescale: float = 0.7
    apg_eta: float = 0.0
    apg_momentum: float = 0.0
    apg_norm_threshold: float = 0.0
    cfg_zero_init_steps: int = 0
    # normalized attention guidance: off at scale 1
    nag_scale: float = 1.0
    nag_tau: float = 2.5
    nag_alpha: float = 0.25
    # variations (A1111 "Variation seed" / "Variation seed strength")
    variation_seed: int | None = None
    variation_strength: float = 0.0
    # hires fix: off at scale 1; 0 steps / "" sampler mean "as the main pass"
    hires_scale: float = 1.0
    hires_upscaler: str = "latent-bislerp"
    hires_steps: int = 0
    hires_denoise: float = 0.5
    hires_sampler: str = ""
    hires_scheduler: str = ""
    hires_max_side: int = 2048
    hires_max_step: float = 1.75
    # VAE tiling
    tiled_vae: str = "auto"
    # img2img / inpainting sources (paths as given, plus a content digest to detect changes)
    init_image: str = ""
    init_image_hash: str = ""
    mask: str = ""
    mask_hash: str = ""
    mask_blur: int = 4
    mask_grow: int = 0
    inpaint_area: str = "whole"
    inpaint_padding: int = 32

    # ------------------------------------------------------------------ derived
    @property
    def nag(self) -> bool:
        return self.nag_scale != 1.0

    @property
    def hires(self) -> bool:
        return self.hires_scale != 1.0

    @property
    def only_masked(self) -> bool:
        return self.inpaint_area == "only masked"

    # ------------------------------------------------------------------ validation
    def validate(self, samplers: Collection[str] = (), schedulers: Collection[str] = ()) -> Workflow:
        """Raise a one-line `AnimaError` for the first bad value; sampler names are checked when given."""
        _choice("guidance", self.guidance, GUIDANCES)
        _range("CFG rescale", self.cfg_rescale, 0.0, 1.0)
        _finite("APG eta", self.apg_eta)
        _range("APG momentum", self.apg_momentum, -5.0, 0.999)
        _range("APG norm threshold", self.apg_norm_threshold, 0.0, math.inf)
        _int_range("CFG-Zero init steps", self.cfg_zero_init_steps, 0, 10_000)
        _range("NAG scale", self.nag_scale, 1.0, 50.0)
        _range("NAG tau", self.nag_tau, 1.0, 100.0)
        _range("NAG alpha", self.nag_alpha, 0.0, 1.0)
        if self.variation_seed is not None:
            _int_range("variation seed", self.variation_seed, 0, MAX_SEED)
        _range("variation strength", self.variation_strength, 0.0, 1.0)
        if self.variation_strength > 0 and self.variation_seed is None:
            raise AnimaError("a variation strength needs a variation seed (--variation-seed)")
        _range("hires scale", self.hires_scale, 1.0, 8.0)
        _choice("hires upscaler", self.hires_upscaler, HIRES_UPSCALERS)
        _int_range("hires steps", self.hires_steps, 0, 10_000)
        if not (_is_number(self.hires_denoise) and 0 < self.hires_denoise <= 1):
            raise AnimaError(f"hires denoise must be in (0, 1], got {self.hires_denoise!r}")
        _int_range("hires max side", self.hires_max_side, 64, 16384)
        _range("hires max step", self.hires_max_step, 1.05, 4.0)
        _choice("tiled VAE mode", self.tiled_vae, TILED_VAE_MODES)
        _int_range("mask blur", self.mask_blur, 0, 256)
        _int_range("mask grow", self.mask_grow, -256, 256)
        _choice("inpaint area", self.inpaint_area, INPAINT_AREAS)
        _int_range("inpaint padding", self.inpaint_padding, 0, 4096)
        if self.hires_sampler and samplers:
            _choice("hires sampler", self.hires_sampler, samplers)
        if self.hires_scheduler and schedulers:
            _choice("hires scheduler", self.hires_scheduler, schedulers)
        return self

    # ------------------------------------------------------------------ Recipe.extra <-> Workflow
    @classmethod
    def from_extra(cls, extra: tuple[tuple[str, str], ...]) -> Workflow:
        """Parse the known keys of ``Recipe.extra``; other keys are ignored. Validates."""
        values: dict[str, Any] = {}
        for key, text in extra:
            spec = _BY_LABEL.get(key.lower())
            if spec is None:
                continue
            name, _, parse = spec
            try:
                values[name] = parse(text.strip())
            except ValueError:
                raise AnimaError(f"recipe setting {key!r}: cannot read {text!r}") from None
        return cls(**values).validate()

    @classmethod
    def from_recipe(cls, recipe) -> Workflow:
        return cls.from_extra(recipe.extra)

    def to_extra(self) -> tuple[tuple[str, str], ...]:
        """The non-default settings as (label, text) pairs, in a fixed order."""
        default = Workflow()
        out = []
        for name, label, _ in _SPECS:
            value = getattr(self, name)
            if value != getattr(default, name):
                out.append((label, _format(value)))
        return tuple(out)

    def apply(self, recipe):
        """`recipe` with its workflow pairs replaced by this workflow's (other extra pairs kept)."""
        ours = {label.lower() for _, label, _ in _SPECS}
        kept = tuple((k, v) for k, v in recipe.extra if k.lower() not in ours)
        return recipe.with_(extra=kept + self.to_extra())

    def with_(self, **changes: Any) -> Workflow:
        known = {f.name for f in fields(self)}
        for key in changes:
            if key not in known:
                raise AnimaError(f"unknown workflow setting {key!r}")
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------- parsing helpers
def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def _parse_upscaler(text: str) -> str:
    return _A1111_UPSCALERS.get(text.lower(), text.lower())


def _parse_name(text: str) -> str:
    return text.strip().lower().replace(" ", "_")


def _str(text: str) -> str:
    return text


def _lower(text: str) -> str:
    return text.lower()


_SPECS: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("guidance", "Guidance", _lower),
    ("cfg_rescale", "CFG rescale", float),
    ("apg_eta", "APG eta", float),
    ("apg_momentum", "APG momentum", float),
    ("apg_norm_threshold", "APG norm threshold", float),
    ("cfg_zero_init_steps", "CFG-Zero init steps", int),
    ("nag_scale", "NAG scale", float),
    ("nag_tau", "NAG tau", float),
    ("nag_alpha", "NAG alpha", float),
    ("variation_seed", "Variation seed", _parse_optional_int),
    ("variation_strength", "Variation seed strength", float),
    ("hires_scale", "Hires upscale", float),
    ("hires_upscaler", "Hires upscaler", _parse_upscaler),
    ("hires_steps", "Hires steps", int),
    ("hires_denoise", "Hires denoise", float),
    ("hires_sampler", "Hires sampler", _parse_name),
    ("hires_scheduler", "Hires schedule type", _parse_name),
    ("hires_max_side", "Hires max side", int),
    ("hires_max_step", "Hires max step", float),
    ("tiled_vae", "Tiled VAE", _lower),
    ("init_image", "Init image", _str),
    ("init_image_hash", "Init image hash", _str),
    ("mask", "Mask", _str),
    ("mask_hash", "Mask hash", _str),
    ("mask_blur", "Mask blur", int),
    ("mask_grow", "Mask grow", int),
    ("inpaint_area", "Inpaint area", _lower),
    ("inpaint_padding", "Inpaint padding", int),
)
_BY_LABEL = {label.lower(): (name, label, parse) for name, label, parse in _SPECS}
LABELS = {name: label for name, label, _ in _SPECS}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return "" if value is None else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _finite(what: str, value: Any) -> None:
    if not _is_number(value):
        raise AnimaError(f"{what} must be a finite number, got {value!r}")


def _range(what: str, value: Any, lo: float, hi: float) -> None:
    if not (_is_number(value) and lo <= value <= hi):
        bound = f"{lo:g}..{hi:g}" if hi != math.inf else f">= {lo:g}"
        raise AnimaError(f"{what} must be in {bound}, got {value!r}")


def _int_range(what: str, value: Any, lo: int, hi: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi):
        raise AnimaError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")


def _choice(what: str, value: Any, allowed: Collection[str]) -> None:
    if value not in allowed:
        raise AnimaError(f"unknown {what} {value!r}; choose from: {', '.join(sorted(allowed))}")
