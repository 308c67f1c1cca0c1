"""The workflow settings of a recipe, one frozen group per feature, validated where they are made.

Each group's defaults mean "off" (or "as the main pass"), so a plain text-to-image recipe carries
only default groups. The groups are fields of `anima.recipe.Recipe`; the text forms (A1111 infotext
labels, the JSON recipe, CLI flags) are conversions at the edges (`anima.interop.a1111`,
`anima.recipe.codec`, `anima.cli`), never parsed again inside the engine.

Numbers given as ints for float settings are stored as floats, so equal settings hash equally.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from anima.errors import AnimaError
from anima.recipe import checks
from anima.recipe.image_ops import parse_ops
from anima.sampling.names import GUIDANCES

HIRES_UPSCALERS = ("latent-bislerp", "latent-nearest-exact", "latent-bilinear", "lanczos")
# Besides the built-in names, a hires upscaler may be an upscaler model (ESRGAN, RCAN, SwinIR, DAT,
# ...): a file in models/upscale_models/ or a path, with one of these suffixes (`workflows.upscale_model`).
UPSCALER_MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
REGION_OVERLAPS = ("error", "blend")
TILED_VAE_MODES = ("auto", "on", "off")
INPAINT_AREAS = ("whole", "only masked")
WEIGHT_FORMATS = ("int8", "fp8")
LORA_KEY_RULES = ("all", "comfyui")
MASK_CHANNELS = ("", "alpha", "red", "green", "blue")
MAX_SEED = 2**64 - 1


class _Group:
    """Shared behaviour of the setting groups: `with_`, `is_default`, float coercion."""

    def with_(self, **changes: Any):
        known = {f.name for f in fields(self)}  # type: ignore[arg-type]
        for key in changes:
            if key not in known:
                raise AnimaError(f"unknown {self.label} setting {key!r}")  # type: ignore[attr-defined]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @property
    def is_default(self) -> bool:
        return self == type(self)()

    def _float(self, name: str) -> None:
        value = getattr(self, name)
        if checks.is_number(value):
            object.__setattr__(self, name, float(value))


@dataclass(frozen=True)
class Guidance(_Group):
    """How cond and uncond predictions combine (`anima.sampling.guidance`)."""

    kind: str = "cfg"
    rescale: float = 0.7  # rescale-cfg: blend factor phi
    apg_eta: float = 0.0
    apg_momentum: float = 0.0
    apg_norm_threshold: float = 0.0
    zero_init_steps: int = 0  # cfg-zero-star: first steps with zero velocity
    label = "guidance"

    def __post_init__(self) -> None:
        checks.choice("guidance", self.kind, GUIDANCES, setting="guidance")
        for name in ("rescale", "apg_eta", "apg_momentum", "apg_norm_threshold"):
            self._float(name)
        checks.in_range("CFG rescale", self.rescale, 0.0, 1.0, setting="cfg_rescale")
        checks.finite("APG eta", self.apg_eta, setting="apg_eta")
        checks.in_range("APG momentum", self.apg_momentum, -5.0, 0.999, setting="apg_momentum")
        checks.in_range(
            "APG norm threshold", self.apg_norm_threshold, 0.0, float("inf"), setting="apg_norm_threshold"
        )
        checks.int_in_range(
            "CFG-Zero init steps", self.zero_init_steps, 0, 10_000, setting="cfg_zero_init_steps"
        )


@dataclass(frozen=True)
class Nag(_Group):
    """Normalized attention guidance: a negative prompt that also works at CFG 1. Off at scale 1."""

    scale: float = 1.0
    tau: float = 2.5
    alpha: float = 0.25
    label = "NAG"

    def __post_init__(self) -> None:
        for name in ("scale", "tau", "alpha"):
            self._float(name)
        checks.in_range("NAG scale", self.scale, 1.0, 50.0, setting="nag_scale")
        checks.in_range("NAG tau", self.tau, 1.0, 100.0, setting="nag_tau")
        checks.in_range("NAG alpha", self.alpha, 0.0, 1.0, setting="nag_alpha")

    @property
    def on(self) -> bool:
        return self.scale != 1.0


@dataclass(frozen=True)
class Variation(_Group):
    """A1111 variation seeds: the initial noise slerped towards another seed's."""

    seed: int | None = None
    strength: float = 0.0
    label = "variation"

    def __post_init__(self) -> None:
        self._float("strength")
        if self.seed is not None:
            checks.int_in_range("variation seed", self.seed, 0, MAX_SEED, setting="variation_seed")
        checks.in_range("variation strength", self.strength, 0.0, 1.0, setting="variation_strength")
        if self.strength > 0 and self.seed is None:
            raise AnimaError("a variation strength needs a variation seed", setting="variation_seed")

    @property
    def on(self) -> bool:
        return self.strength > 0 and self.seed is not None


@dataclass(frozen=True)
class Hires(_Group):
    """Hires fix: upscale and re-sample in passes of at most `max_step`x. Off at scale 1.

    `steps` 0 and empty `sampler` / `scheduler` mean "as the main pass"."""

    scale: float = 1.0
    upscaler: str = "latent-bislerp"
    upscaler_hash: str = ""  # digest of an upscaler model file, so a re-run refuses a changed file
    steps: int = 0
    denoise: float = 0.5
    sampler: str = ""
    scheduler: str = ""
    max_side: int = 2048
    max_step: float = 1.75
    label = "hires"

    def __post_init__(self) -> None:
        for name in ("scale", "denoise", "max_step"):
            self._float(name)
        checks.in_range("hires scale", self.scale, 1.0, 8.0, setting="hires_scale")
        if not is_upscaler_model(self.upscaler):
            checks.choice("hires upscaler", self.upscaler, HIRES_UPSCALERS, setting="hires_upscaler")
        checks.one_line("hires upscaler", self.upscaler)
        checks.one_line("hires upscaler hash", checks.text("hires upscaler hash", self.upscaler_hash))
        checks.int_in_range("hires steps", self.steps, 0, 10_000, setting="hires_steps")
        checks.in_range("hires denoise", self.denoise, 0.0, 1.0, open_low=True, setting="hires_denoise")
        checks.text("hires sampler", self.sampler)  # names: `Recipe.validate`, when the recipe runs
        checks.text("hires scheduler", self.scheduler)
        checks.int_in_range("hires max side", self.max_side, 64, 16384, setting="hires_max_side")
        checks.in_range("hires max step", self.max_step, 1.05, 4.0, setting="hires_max_step")

    @property
    def on(self) -> bool:
        return self.scale != 1.0

    @property
    def uses_model(self) -> bool:
        """Is the upscaler an upscaler model file (not a latent or Lanczos resize)?"""
        return is_upscaler_model(self.upscaler)


def is_upscaler_model(name: str) -> bool:
    """A file name or path of an upscaler model, by its suffix ("4x-AnimeSharp.pth")."""
    return isinstance(name, str) and name.lower().endswith(UPSCALER_MODEL_SUFFIXES)


@dataclass(frozen=True)
class Regional(_Group):
    """Shared settings of the regional prompts (`Recipe.regions`; `anima.workflows.regions`).

    `base_weight`: share of the base prompt in every region's tokens (0: a region's tokens see only
    their own prompt); `end_step`: main-pass steps with regions (0: all steps and the hires passes;
    N: steps 1..N, then every token sees the base prompt); `overlap`: what overlapping regions mean
    (``error``: refuse them; ``blend``: share the overlap in proportion to coverage)."""

    base_weight: float = 0.2
    end_step: int = 0
    overlap: str = "error"
    label = "regional prompts"

    def __post_init__(self) -> None:
        self._float("base_weight")
        checks.in_range("regions base weight", self.base_weight, 0.0, 1.0, setting="regions_base_weight")
        checks.int_in_range("regions end step", self.end_step, 0, 10_000, setting="regions_end_step")
        checks.choice("regions overlap policy", self.overlap, REGION_OVERLAPS, setting="regions_overlap")


@dataclass(frozen=True)
class Reference(_Group):
    """Reference editing ("Cosmos reference", with an Edit LoRA): the image (absolute path + digest,
    as `Sources` records inputs) appended as a clean frame along T; `strength` scales its latent."""

    image: str = ""
    image_hash: str = ""
    strength: float = 1.0
    label = "reference"

    def __post_init__(self) -> None:
        self._float("strength")
        for name in ("image", "image_hash"):
            what = "reference " + name.replace("_", " ")
            checks.one_line(what, checks.text(what, getattr(self, name)))
        checks.in_range("reference strength", self.strength, 0.0, 2.0, setting="reference_strength")

    @property
    def on(self) -> bool:
        return bool(self.image)


@dataclass(frozen=True)
class Sources(_Group):
    """img2img / inpainting inputs as given (absolute paths) plus a digest of each file, so a
    re-run finds them again and refuses a file that changed since."""

    init_image: str = ""
    init_image_hash: str = ""
    mask: str = ""
    mask_hash: str = ""
    label = "source image"

    def __post_init__(self) -> None:
        for f in fields(self):
            checks.one_line(
                f.name.replace("_", " "), checks.text(f.name.replace("_", " "), getattr(self, f.name))
            )
        if self.mask and not self.init_image:
            raise AnimaError("a mask needs an init image to repaint", setting="init_image")


@dataclass(frozen=True)
class Inpaint(_Group):
    """How a mask is treated: feathering, growing, and "only masked" crops."""

    mask_blur: int = 4
    mask_grow: int = 0
    area: str = "whole"
    padding: int = 32
    label = "inpaint"

    def __post_init__(self) -> None:
        checks.int_in_range("mask blur", self.mask_blur, 0, 256, setting="mask_blur")
        checks.int_in_range("mask grow", self.mask_grow, -256, 256, setting="mask_grow")
        checks.choice("inpaint area", self.area, INPAINT_AREAS, setting="inpaint_area")
        checks.int_in_range("inpaint padding", self.padding, 0, 4096, setting="inpaint_padding")

    @property
    def only_masked(self) -> bool:
        return self.area == "only masked"


@dataclass(frozen=True)
class Perf(_Group):
    """Speed options that change the image, so the recipe records them and a re-run repeats them.

    `weights`: 8-bit DiT weights (None: the compute dtype); `weights_matmul`: which matmul the
    8-bit layers ran and on what ("int8 matmul (torch._int_mm) on AVX512"; "" when none; a record
    only: the kernel is the machine's, a re-run does not ask for it); `step_cache`: threshold of the
    first-block step cache (None: off); `fp16_accumulation`: fp16 accumulation in CUDA matmuls;
    `tiled_vae`: tile the VAE (auto decides by free memory)."""

    weights: str | None = None
    weights_matmul: str = ""
    step_cache: float | None = None
    fp16_accumulation: bool = False
    tiled_vae: str = "auto"
    label = "speed"

    def __post_init__(self) -> None:
        if self.weights is not None:
            checks.choice("weights format", self.weights, WEIGHT_FORMATS, setting="weights")
        checks.one_line("weights matmul", checks.text("weights matmul", self.weights_matmul))
        if self.step_cache is not None:
            self._float("step_cache")
            if not (checks.is_number(self.step_cache) and 0 < self.step_cache < 1):
                raise AnimaError(
                    f"step cache threshold must be in (0, 1), e.g. 0.1; got {self.step_cache!r}",
                    setting="step_cache",
                )
        if not isinstance(self.fp16_accumulation, bool):
            raise AnimaError(f"fp16 accumulation must be true or false, got {self.fp16_accumulation!r}")
        checks.choice("tiled VAE mode", self.tiled_vae, TILED_VAE_MODES, setting="tiled_vae")


@dataclass(frozen=True)
class Origin(_Group):
    """Where a recipe came from, for the record (the image depends on none of it): the wildcard
    templates its prompts were expanded from, whether a prompt matrix made them, and the training
    step of a sample image (0: not a training sample)."""

    wildcard_prompt: str = ""
    wildcard_negative_prompt: str = ""
    prompt_matrix: bool = False
    training_step: int = 0
    label = "origin"

    def __post_init__(self) -> None:
        checks.int_in_range("training step", self.training_step, 0, 2**63 - 1, setting="training_step")
        for name in ("wildcard_prompt", "wildcard_negative_prompt"):
            checks.one_line(name.replace("_", " "), checks.text(name.replace("_", " "), getattr(self, name)))
        if not isinstance(self.prompt_matrix, bool):
            raise AnimaError(f"prompt matrix must be true or false, got {self.prompt_matrix!r}")


@dataclass(frozen=True)
class GridAxis:
    """One axis of an X/Y/Z grid: a setting name (a recipe field, a flat setting, or ``size`` /
    ``prompt`` / ``negative_prompt``) and its values as written (``cfg=3,4,5``)."""

    name: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.name or not self.values or not all(isinstance(v, str) and v for v in self.values):
            raise AnimaError(f"grid axis {self.name!r} needs a name and at least one value")

    @classmethod
    def parse(cls, text: str) -> GridAxis:
        """``name=v1,v2`` (CSV-quoted values may hold commas) -> GridAxis; names are normalised
        (``Hires-Scale`` -> ``hires_scale``) and checked when the grid is planned."""
        name, sep, values = text.partition("=")
        key = name.strip().lower().replace("-", "_").replace(" ", "_")
        if not sep or not key:
            raise AnimaError(f"grid axis {text!r}: write NAME=VALUE1,VALUE2 (for example cfg=3,4,5)")
        items = [v.strip() for v in next(csv.reader([values], skipinitialspace=True), []) if v.strip()]
        if not items:
            raise AnimaError(f"grid axis {key} has no values")
        return cls(key, tuple(items))

    def spec(self) -> str:
        """``name=v1,v2`` (values holding commas or quotes CSV-quoted)."""
        return f"{self.name}=" + ",".join(f'"{v}"' if any(c in v for c in ',"') else v for v in self.values)


@dataclass(frozen=True)
class Advanced(_Group):
    """ComfyUI's KSamplerAdvanced: which part of the schedule the main pass runs.

    The schedule is computed for `steps`, cut after `end_step` (its last sigma set to 0 unless
    `leftover_noise`), then started at `start_step`; `add_noise` off starts from the input latent
    with no seed noise (the sampler's own per-step noise stays). Defaults: the whole schedule."""

    add_noise: bool = True
    start_step: int = 0
    end_step: int = 10_000
    leftover_noise: bool = False
    label = "advanced sampling"

    def __post_init__(self) -> None:
        for name in ("add_noise", "leftover_noise"):
            if not isinstance(getattr(self, name), bool):
                raise AnimaError(f"{name.replace('_', ' ')} must be true or false", setting=name)
        checks.int_in_range("start step", self.start_step, 0, 10_000, setting="start_step")
        checks.int_in_range("end step", self.end_step, 0, 10_000, setting="end_step")

    @property
    def on(self) -> bool:
        return not self.is_default


@dataclass(frozen=True)
class ComfyNodes(_Group):
    """What a ComfyUI graph's nodes did that anima's own settings do not say.

    `zero_negative`: ConditioningZeroOut on the negative (the Qwen3 states are zeroed, the T5 ids
    and weights kept, so the adapter still runs); `lora_keys` "comfyui": the LoRAs apply only the
    keys ComfyUI's loader maps for Anima (``lora_unet_*`` and ``diffusion_model.*``, see
    `anima.lora.comfy_keys`), and `clip_loras` are LoraLoader's text-encoder halves under the same
    rule; `init_resize`: how the init image was prepared before VAEEncode (`anima.recipe.image_ops`;
    set, the image is then centre-cropped to multiples of 8 like VAEEncode instead of resized);
    `mask_channel`: where the mask comes from (alpha: 1 - alpha, as LoadImage's MASK; a colour
    channel, as LoadImageMask; empty: the luminance); `noise_mask`: SetLatentNoiseMask semantics
    (the mask scaled to the latent with trilinear interpolation, no feathering, no pixel composite)."""

    zero_negative: bool = False
    lora_keys: str = "all"
    clip_loras: tuple[tuple[str, float], ...] = ()
    init_resize: str = ""
    mask_channel: str = ""
    noise_mask: bool = False
    label = "ComfyUI node"

    def __post_init__(self) -> None:
        for name in ("zero_negative", "noise_mask"):
            if not isinstance(getattr(self, name), bool):
                raise AnimaError(f"{name.replace('_', ' ')} must be true or false", setting=name)
        checks.choice("LoRA key rule", self.lora_keys, LORA_KEY_RULES, setting="lora_keys")
        try:
            pairs = tuple((n, w) for n, w in self.clip_loras)
        except (TypeError, ValueError):
            raise AnimaError("clip LoRAs take (name, strength) pairs", setting="clip_loras") from None
        for name, strength in pairs:
            if not isinstance(name, str) or not name or not checks.is_number(strength):
                raise AnimaError(f"bad clip LoRA entry {name!r}: {strength!r}", setting="clip_loras")
        object.__setattr__(self, "clip_loras", tuple((n, float(w)) for n, w in pairs))
        if pairs and self.lora_keys != "comfyui":
            raise AnimaError("clip LoRAs come from ComfyUI graphs: they need the comfyui LoRA key rule")
        checks.one_line("init resize", checks.text("init resize", self.init_resize))
        parse_ops(self.init_resize, "init resize")
        checks.choice("mask channel", self.mask_channel, MASK_CHANNELS, setting="mask_channel")


GROUPS: dict[str, type[_Group]] = {
    "guidance": Guidance,
    "nag": Nag,
    "variation": Variation,
    "hires": Hires,
    "sources": Sources,
    "inpaint": Inpaint,
    "perf": Perf,
    "origin": Origin,
    "regional": Regional,
    "reference": Reference,
    "advanced": Advanced,
    "comfy": ComfyNodes,
}
