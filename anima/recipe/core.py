"""`Recipe`: every setting that determines an image, as one frozen, hashable, validated value.

A recipe is what the CLI builds from flags, what the server builds from a request, what a job
file holds and what a PNG carries. It is made once, validated where it is made (a bad value is a
one-line `AnimaError` from the constructor, long before any model is loaded), and never turned
back into text inside the engine: the JSON form (`anima.recipe.codec`) and the A1111 infotext
(`anima.interop.a1111`) are conversions at the edges.

The core fields are those of ComfyUI's KSampler plus the model identity; the workflow settings
are frozen groups (`anima.recipe.settings`) with "off" defaults. Flat names such as
``hires_scale`` address a group field (`SETTINGS`), so CLI flags, grid axes, the Python API and the
A1111 labels all speak the same names.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from anima.errors import AnimaError
from anima.recipe import checks, codec
from anima.recipe.control import ControlUnit
from anima.recipe.regions import Region, check_regions
from anima.recipe.settings import (
    GROUPS,
    MAX_SEED,
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
    _Group,
)
from anima.recipe.sizes import check_size
from anima.sampling.names import SAMPLER_NAMES, SCHEDULER_NAMES

__all__ = ["DEFAULT_NEGATIVE", "DTYPES", "SETTINGS", "Recipe"]

DEFAULT_NEGATIVE = "worst quality, low quality, score_1, score_2, score_3, blurry, jpeg artifacts, sepia"
DTYPES = ("fp32", "bf16", "fp16")

# Keys of `extra` become "Key: value" pairs in the A1111 infotext, so they follow its key syntax.
_EXTRA_KEY = re.compile(r"^[A-Za-z][\w \-/+.()]*$")

# flat setting name -> (group field of Recipe, field of that group)
SETTINGS: Mapping[str, tuple[str, str]] = {
    "guidance": ("guidance", "kind"),
    "cfg_rescale": ("guidance", "rescale"),
    "apg_eta": ("guidance", "apg_eta"),
    "apg_momentum": ("guidance", "apg_momentum"),
    "apg_norm_threshold": ("guidance", "apg_norm_threshold"),
    "cfg_zero_init_steps": ("guidance", "zero_init_steps"),
    "nag_scale": ("nag", "scale"),
    "nag_tau": ("nag", "tau"),
    "nag_alpha": ("nag", "alpha"),
    "variation_seed": ("variation", "seed"),
    "variation_strength": ("variation", "strength"),
    "hires_scale": ("hires", "scale"),
    "hires_upscaler": ("hires", "upscaler"),
    "hires_upscaler_hash": ("hires", "upscaler_hash"),
    "hires_steps": ("hires", "steps"),
    "hires_denoise": ("hires", "denoise"),
    "hires_sampler": ("hires", "sampler"),
    "hires_scheduler": ("hires", "scheduler"),
    "hires_max_side": ("hires", "max_side"),
    "hires_max_step": ("hires", "max_step"),
    "init_image": ("sources", "init_image"),
    "init_image_hash": ("sources", "init_image_hash"),
    "mask": ("sources", "mask"),
    "mask_hash": ("sources", "mask_hash"),
    "mask_blur": ("inpaint", "mask_blur"),
    "mask_grow": ("inpaint", "mask_grow"),
    "inpaint_area": ("inpaint", "area"),
    "inpaint_padding": ("inpaint", "padding"),
    "weights": ("perf", "weights"),
    "weights_matmul": ("perf", "weights_matmul"),
    "step_cache": ("perf", "step_cache"),
    "fp16_accumulation": ("perf", "fp16_accumulation"),
    "tiled_vae": ("perf", "tiled_vae"),
    "wildcard_prompt": ("origin", "wildcard_prompt"),
    "wildcard_negative_prompt": ("origin", "wildcard_negative_prompt"),
    "prompt_matrix": ("origin", "prompt_matrix"),
    "training_step": ("origin", "training_step"),
    "regions_base_weight": ("regional", "base_weight"),
    "regions_end_step": ("regional", "end_step"),
    "regions_overlap": ("regional", "overlap"),
    "reference_image": ("reference", "image"),
    "reference_image_hash": ("reference", "image_hash"),
    "reference_strength": ("reference", "strength"),
    "add_noise": ("advanced", "add_noise"),
    "start_step": ("advanced", "start_step"),
    "end_step": ("advanced", "end_step"),
    "leftover_noise": ("advanced", "leftover_noise"),
    "zero_negative": ("comfy", "zero_negative"),
    "lora_keys": ("comfy", "lora_keys"),
    "clip_loras": ("comfy", "clip_loras"),
    "init_resize": ("comfy", "init_resize"),
    "mask_channel": ("comfy", "mask_channel"),
    "noise_mask": ("comfy", "noise_mask"),
}


SETTING_DEFAULTS: Mapping[str, Any] = {name: getattr(GROUPS[g](), k) for name, (g, k) in SETTINGS.items()}


@dataclass(frozen=True)
class Recipe:
    """Everything that determines an image. Hashable, so it can key caches and dedupe jobs.

    `loras` holds (name, strength) pairs; `regions` the regional prompts (`anima.recipe.regions`,
    their shared settings the `regional` group); `grid` the axes of a contact sheet's recipe; `extra`
    only (key, value) text pairs written by other tools (unknown A1111 fields on import), kept so
    they survive a round trip. Lists and dicts given for them are frozen into tuples.
    """

    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE
    width: int = 1024
    height: int = 1024
    steps: int = 30
    cfg: float = 4.0
    sampler: str = "er_sde"
    scheduler: str = "simple"
    shift: float = 3.0
    seed: int = 0
    batch_size: int = 1
    denoise: float = 1.0
    model: str = ""
    model_hash: str = ""
    dtype: str = "fp32"
    loras: tuple[tuple[str, float], ...] = ()
    guidance: Guidance = field(default_factory=Guidance)
    nag: Nag = field(default_factory=Nag)
    variation: Variation = field(default_factory=Variation)
    hires: Hires = field(default_factory=Hires)
    sources: Sources = field(default_factory=Sources)
    inpaint: Inpaint = field(default_factory=Inpaint)
    perf: Perf = field(default_factory=Perf)
    origin: Origin = field(default_factory=Origin)
    regional: Regional = field(default_factory=Regional)
    reference: Reference = field(default_factory=Reference)
    regions: tuple[Region, ...] = ()
    advanced: Advanced = field(default_factory=Advanced)
    comfy: ComfyNodes = field(default_factory=ComfyNodes)
    grid: tuple[GridAxis, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    controls: tuple[ControlUnit, ...] = ()  # ControlNet-LLLite patches, applied in order

    def __post_init__(self) -> None:
        # Frozen + hashable needs tuples; accept the natural JSON/Python shapes and freeze them.
        loras = self.loras.items() if isinstance(self.loras, Mapping) else self.loras
        extra = self.extra.items() if isinstance(self.extra, Mapping) else self.extra
        try:
            object.__setattr__(self, "loras", tuple((n, w) for n, w in loras))
            object.__setattr__(self, "extra", tuple((k, v) for k, v in extra))
            object.__setattr__(self, "grid", tuple(self.grid))
            object.__setattr__(self, "regions", tuple(self.regions))
            object.__setattr__(self, "controls", tuple(self.controls))
        except (TypeError, ValueError):
            raise AnimaError("loras and extra take (name, value) pairs") from None
        for name in ("cfg", "shift", "denoise"):
            if checks.is_number(getattr(self, name)):
                object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(
            self, "loras", tuple((n, float(w) if checks.is_number(w) else w) for n, w in self.loras)
        )
        _check_fields(self)

    # ----------------------------------------------------------------- changes
    def with_(self, **changes: Any) -> Recipe:
        """A copy with some fields replaced: recipe fields (``seed=7``), whole groups
        (``hires=Hires(scale=2)``) or flat settings (``hires_scale=2``, see `SETTINGS`)."""
        known = {f.name for f in fields(self)}
        direct: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            if key in SETTINGS and not isinstance(value, _Group):  # "guidance" is both: text = its kind
                group, name = SETTINGS[key]
                groups.setdefault(group, {})[name] = value
            elif key in known:
                direct[key] = value
            else:
                raise AnimaError(f"unknown recipe field {key!r}")
        for group, values in groups.items():
            direct[group] = direct.get(group, getattr(self, group)).with_(**values)
        return dataclasses.replace(self, **direct) if direct else self

    @classmethod
    def make(cls, prompt: str, **settings: Any) -> Recipe:
        """``Recipe.make("1girl", steps=20, hires_scale=1.5)``: recipe fields and flat settings."""
        flat = {k: v for k, v in settings.items() if k in SETTINGS and not isinstance(v, _Group)}
        core = {k: v for k, v in settings.items() if k not in flat}
        unknown = set(core) - {f.name for f in fields(cls)}
        if unknown:
            raise AnimaError(f"unknown recipe field {sorted(unknown)[0]!r}")
        core |= groups_of(flat, {k: v for k, v in core.items() if isinstance(v, _Group)})
        return cls(prompt, **core)

    def setting(self, name: str) -> Any:
        """The value of a recipe field or a flat setting (``recipe.setting("hires_scale")``)."""
        if name in SETTINGS:
            group, key = SETTINGS[name]
            return getattr(getattr(self, group), key)
        if name in {f.name for f in fields(self)}:
            return getattr(self, name)
        raise AnimaError(f"unknown recipe field {name!r}")

    def validate(
        self, samplers: Collection[str] = SAMPLER_NAMES, schedulers: Collection[str] = SCHEDULER_NAMES
    ) -> Recipe:
        """Self, when anima (or a narrower offer, a service's) can run its samplers and schedulers.

        Every value was checked when the recipe was made; only this is left for when it is run,
        because a recipe may describe an image made elsewhere (an A1111 PNG with ``DPM2``)."""
        checks.choice("sampler", self.sampler, samplers, setting="sampler")
        checks.choice("scheduler", self.scheduler, schedulers, setting="scheduler")
        if self.hires.sampler:
            checks.choice("hires sampler", self.hires.sampler, samplers, setting="hires_sampler")
        if self.hires.scheduler:
            checks.choice("hires scheduler", self.hires.scheduler, schedulers, setting="hires_scheduler")
        return self

    # ----------------------------------------------------------------- JSON (anima.recipe.codec)
    def to_dict(self) -> dict[str, Any]:
        return codec.to_dict(self)

    def to_json(self) -> str:
        return codec.to_json(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        return codec.from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        return codec.from_json(cls, text)


def changed_settings(recipe: Recipe) -> dict[str, Any]:
    """The flat settings of `recipe` that differ from their defaults, in `SETTINGS` order: the
    short form front ends show and send (``{"hires_scale": 1.5, "nag_scale": 3.0}``)."""
    out = {}
    for name, (group, key) in SETTINGS.items():
        value = getattr(getattr(recipe, group), key)
        if value != SETTING_DEFAULTS[name]:
            out[name] = value
    return out


def groups_of(flat: Mapping[str, Any], base: Mapping[str, _Group] | None = None) -> dict[str, _Group]:
    """Flat settings -> the setting groups they change (each made, and so checked, once), starting
    from `base` groups (a recipe's, say) or the defaults."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        if key not in SETTINGS:
            raise AnimaError(f"unknown recipe setting {key!r}")
        group, name = SETTINGS[key]
        changes.setdefault(group, {})[name] = value
    base = base or {}
    return {g: (base.get(g) or GROUPS[g]()).with_(**values) for g, values in changes.items()}


def _check_fields(r: Recipe) -> None:
    """Every check of the core fields, one `AnimaError` line for the first bad value. The groups
    checked themselves when they were made; here only their types."""
    for what in ("prompt", "negative_prompt", "model", "model_hash"):
        checks.text(what.replace("_", " "), getattr(r, what))
    check_size("width", r.width)
    check_size("height", r.height)
    if not checks.is_int(r.steps) or r.steps <= 0:
        raise AnimaError(f"steps must be a positive integer, got {r.steps!r}", setting="steps")
    if not checks.is_number(r.cfg) or r.cfg < 0:
        raise AnimaError(f"cfg must be a number >= 0, got {r.cfg!r}", setting="cfg")
    if not checks.is_number(r.shift) or r.shift <= 0:
        raise AnimaError(f"shift must be a number > 0, got {r.shift!r}", setting="shift")
    if not checks.is_int(r.seed) or not 0 <= r.seed <= MAX_SEED:
        raise AnimaError(f"seed must be an integer in 0..2**64-1, got {r.seed!r}", setting="seed")
    if not checks.is_int(r.batch_size) or r.batch_size < 1:
        raise AnimaError(f"batch size must be an integer >= 1, got {r.batch_size!r}", setting="batch_size")
    if not checks.is_number(r.denoise) or not 0 < r.denoise <= 1:
        raise AnimaError(f"denoise must be in (0, 1], got {r.denoise!r}", setting="denoise")
    if r.dtype not in DTYPES:
        raise AnimaError(f"dtype must be one of {', '.join(DTYPES)}, got {r.dtype!r}", setting="dtype")
    for what in ("sampler", "scheduler"):  # availability is `validate`'s, when the recipe is run
        if not checks.text(what, getattr(r, what)).strip():
            raise AnimaError(f"the {what} name is empty", setting=what)
    for name, strength in r.loras:
        if not isinstance(name, str) or not name or not checks.is_number(strength):
            raise AnimaError(f"bad LoRA entry {name!r}: {strength!r} (need a name and a finite strength)")
    for key, value in r.extra:
        if (
            not isinstance(key, str)
            or not isinstance(value, str)
            or not _EXTRA_KEY.match(key)
            or "\n" in value
        ):
            raise AnimaError(f"bad extra setting {key!r}: keys are words, values one line")
    for name, kind in GROUPS.items():
        if not isinstance(getattr(r, name), kind):
            raise AnimaError(
                f"recipe {name} must be a {kind.__name__}, got {type(getattr(r, name)).__name__}"
            )
    check_regions(r.regions, r.regional.overlap)
    if any(not isinstance(u, ControlUnit) for u in r.controls):
        raise AnimaError("a recipe's controls are ControlUnit values", setting="control_model")
    if r.advanced.on and r.denoise != 1.0:
        raise AnimaError("start/end steps (KSamplerAdvanced) run with denoise 1", setting="denoise")
    if any(not isinstance(a, GridAxis) for a in r.grid) or len(r.grid) > 3:
        raise AnimaError("a recipe's grid is up to three GridAxis values")
