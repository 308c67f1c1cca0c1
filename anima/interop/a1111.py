"""The AUTOMATIC1111 "infotext": the ``parameters`` text A1111, Forge, civitai and image browsers read.

    masterpiece, 1girl                                   <- prompt (may span lines)
    Negative prompt: worst quality, ...                  <- negative prompt (may span lines)
    Steps: 30, Sampler: ER SDE, Schedule type: Simple, CFG scale: 4, Seed: 1, Size: 1024x1024, ...

ComfyUI sampler and scheduler names are written as their A1111/Forge labels. Every workflow setting
that differs from its default is written under the label A1111 uses where it has the setting
("Hires upscale", "Variation seed", "Mask blur") and an anima label otherwise; reading maps the
labels back to typed settings and keeps unknown pairs (other extensions' keys) in `Recipe.extra`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from anima.errors import AnimaError
from anima.interop.a1111_control import control_pairs, controls_from_pairs
from anima.recipe import SETTINGS, GridAxis, Recipe, Region
from anima.recipe.core import changed_settings
from anima.recipe.settings import is_upscaler_model

# ComfyUI sampler name -> A1111 / Forge label (labels as in A1111 1.10 and Forge Neo).
SAMPLER_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "euler": "Euler",
        "euler_ancestral": "Euler a",
        "heun": "Heun",
        "dpm_2": "DPM2",
        "dpm_2_ancestral": "DPM2 a",
        "lms": "LMS",
        "dpm_fast": "DPM fast",
        "dpm_adaptive": "DPM adaptive",
        "dpmpp_2s_ancestral": "DPM++ 2S a",
        "dpmpp_sde": "DPM++ SDE",
        "dpmpp_2m": "DPM++ 2M",
        "dpmpp_2m_sde": "DPM++ 2M SDE",
        "dpmpp_2m_sde_heun": "DPM++ 2M SDE Heun",
        "dpmpp_3m_sde": "DPM++ 3M SDE",
        "ddim": "DDIM",
        "uni_pc": "UniPC",
        "lcm": "LCM",
        "er_sde": "ER SDE",
        "res_multistep": "Res Multistep",
        # ComfyUI's *_gpu variants only move the Brownian noise to the GPU; A1111 has one label.
        # They come after their CPU twins so that reading a label back gives the CPU name.
        "dpmpp_sde_gpu": "DPM++ SDE",
        "dpmpp_2m_sde_gpu": "DPM++ 2M SDE",
        "dpmpp_2m_sde_heun_gpu": "DPM++ 2M SDE Heun",
        "dpmpp_3m_sde_gpu": "DPM++ 3M SDE",
    }
)

# ComfyUI scheduler name -> A1111 / Forge "Schedule type" label.
SCHEDULER_LABELS: Mapping[str, str] = MappingProxyType(
    {
        "simple": "Simple",
        "normal": "Normal",
        "karras": "Karras",
        "exponential": "Exponential",
        "sgm_uniform": "SGM Uniform",
        "beta": "Beta",
        "ddim_uniform": "DDIM",
        "linear_quadratic": "Linear Quadratic",
        "kl_optimal": "KL Optimal",
    }
)


def _invert(labels: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, label in labels.items():
        out.setdefault(label.lower(), name)
    return out


_SAMPLER_NAMES = _invert(SAMPLER_LABELS)
_SCHEDULER_NAMES = {**_invert(SCHEDULER_LABELS), "sgmuniform": "sgm_uniform"}

# A1111 labels of its built-in upscalers -> ours (so imported infotexts keep working).
_A1111_UPSCALERS = {
    "latent": "latent-bilinear",
    "latent (nearest-exact)": "latent-nearest-exact",
    "latent (nearest)": "latent-nearest-exact",
    "lanczos": "lanczos",
}


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("", "none") else int(text)


def _on(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise ValueError(text)


def _upscaler(text: str) -> str:
    """A1111's built-in upscaler labels -> ours; an upscaler model file name keeps its case."""
    return text if is_upscaler_model(text) else _A1111_UPSCALERS.get(text.lower(), text.lower())


def _name(text: str) -> str:
    return text.strip().lower().replace(" ", "_")


# flat setting name -> (infotext label, parse text). Labels are A1111's where it has the setting.
SETTING_LABELS: Mapping[str, tuple[str, Callable[[str], Any]]] = MappingProxyType(
    {
        "guidance": ("Guidance", str.lower),
        "cfg_rescale": ("CFG rescale", float),
        "apg_eta": ("APG eta", float),
        "apg_momentum": ("APG momentum", float),
        "apg_norm_threshold": ("APG norm threshold", float),
        "cfg_zero_init_steps": ("CFG-Zero init steps", int),
        "nag_scale": ("NAG scale", float),
        "nag_tau": ("NAG tau", float),
        "nag_alpha": ("NAG alpha", float),
        "variation_seed": ("Variation seed", _optional_int),
        "variation_strength": ("Variation seed strength", float),
        "hires_scale": ("Hires upscale", float),
        "hires_upscaler": ("Hires upscaler", lambda t: _upscaler(t)),
        "hires_upscaler_hash": ("Hires upscaler hash", str),
        "hires_steps": ("Hires steps", int),
        "hires_denoise": ("Hires denoise", float),
        "hires_sampler": ("Hires sampler", _name),
        "hires_scheduler": ("Hires schedule type", _name),
        "hires_max_side": ("Hires max side", int),
        "hires_max_step": ("Hires max step", float),
        "tiled_vae": ("Tiled VAE", str.lower),
        "init_image": ("Init image", str),
        "init_image_hash": ("Init image hash", str),
        "mask": ("Mask", str),
        "mask_hash": ("Mask hash", str),
        "mask_blur": ("Mask blur", int),
        "mask_grow": ("Mask grow", int),
        "inpaint_area": ("Inpaint area", str.lower),
        "inpaint_padding": ("Inpaint padding", int),
        "weights": ("Weights", str.lower),
        "weights_matmul": ("Weights matmul", str),
        "step_cache": ("Step cache", float),
        "fp16_accumulation": ("FP16 accumulation", _on),
        "wildcard_prompt": ("Wildcard prompt", str),
        "wildcard_negative_prompt": ("Wildcard negative prompt", str),
        "prompt_matrix": ("Prompt matrix", _on),
        "training_step": ("Training step", int),
        "regions_base_weight": ("Regions base weight", float),
        "regions_end_step": ("Regions end step", int),
        "regions_overlap": ("Regions overlap", str.lower),
        "reference_image": ("Reference image", str),
        "reference_image_hash": ("Reference image hash", str),
        "reference_strength": ("Reference strength", float),
        "add_noise": ("Add noise", _on),
        "start_step": ("Start step", int),
        "end_step": ("End step", int),
        "leftover_noise": ("Leftover noise", _on),
        "zero_negative": ("Zero negative", _on),
        "lora_keys": ("LoRA keys", str.lower),
        "clip_loras": ("Clip LoRAs", lambda t: tuple(_parse_lora(i) for i in t.split(", ") if i.strip())),
        "init_resize": ("Init resize", str),
        "mask_channel": ("Mask channel", str.lower),
        "noise_mask": ("Noise mask", _on),
    }
)
assert set(SETTING_LABELS) == set(SETTINGS), "every flat setting needs an infotext label"
_BY_LABEL = {label.lower(): (name, parse) for name, (label, parse) in SETTING_LABELS.items()}
GRID_LABELS = ("Grid X", "Grid Y", "Grid Z")


# --------------------------------------------------------------------- writing
def number(value: float) -> str:
    """4.0 -> "4", 4.5 -> "4.5": integral floats print like A1111 prints its slider values."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _text(value: Any) -> str:
    if isinstance(value, tuple):  # (name, strength) pairs, written like "Loras"
        return ", ".join(f"{n}:{number(w)}" for n, w in value)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return number(value)
    return "" if value is None else str(value)


def _quote(value: str) -> str:
    # A1111 JSON-quotes values that would break the "k: v, k: v" line; a leading quote is ours.
    if any(c in value for c in ',:\n"') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def setting_pairs(recipe: Recipe) -> list[tuple[str, str]]:
    """The non-default workflow settings as (label, text) pairs, in a fixed order."""
    changed = changed_settings(recipe)
    pairs = [(label, _text(changed[name])) for name, (label, _) in SETTING_LABELS.items() if name in changed]
    pairs += [(label, axis.spec()) for label, axis in zip(GRID_LABELS, recipe.grid, strict=False)]
    return pairs


def infotext(recipe: Recipe, *, batch_pos: int | None = None) -> str:
    """The A1111 ``parameters`` text for `recipe` (lines: prompt, negative prompt, settings)."""
    pairs: list[tuple[str, str]] = [
        ("Steps", str(recipe.steps)),
        ("Sampler", SAMPLER_LABELS.get(recipe.sampler, recipe.sampler)),
        ("Schedule type", SCHEDULER_LABELS.get(recipe.scheduler, recipe.scheduler)),
        ("CFG scale", number(recipe.cfg)),
        ("Seed", str(recipe.seed)),
        ("Size", f"{recipe.width}x{recipe.height}"),
    ]
    if recipe.model_hash:
        pairs.append(("Model hash", recipe.model_hash))
    if recipe.model:
        pairs.append(("Model", recipe.model))
    pairs.append(("Shift", number(recipe.shift)))
    if recipe.denoise != 1.0:
        pairs.append(("Denoising strength", number(recipe.denoise)))
    if recipe.batch_size > 1:
        pairs.append(("Batch size", str(recipe.batch_size)))
        if batch_pos is not None:
            pairs.append(("Batch pos", str(batch_pos)))
    if recipe.loras:
        pairs.append(("Loras", ", ".join(f"{n}:{number(w)}" for n, w in recipe.loras)))
    if recipe.regions:  # one JSON list (quoted like any value holding commas)
        pairs.append(("Regions", json.dumps([r.to_dict() for r in recipe.regions], ensure_ascii=False)))
    pairs.extend(setting_pairs(recipe))
    pairs.extend(control_pairs(recipe.controls))
    pairs.extend(recipe.extra)
    lines = [recipe.prompt]
    if recipe.negative_prompt:
        lines.append(f"Negative prompt: {recipe.negative_prompt}")
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in pairs))
    return "\n".join(lines)


# --------------------------------------------------------------------- reading
_PAIR = re.compile(r'\s*([A-Za-z][\w \-/+.()]*?):\s*("(?:\\.|[^\\"])*"|[^,]*)\s*(?:,|$)')


def _parse_pairs(line: str) -> list[tuple[str, str]] | None:
    """Split ``k: v, k: "v, w"`` into pairs, or None when the line is not entirely such pairs."""
    pairs, pos = [], 0
    while pos < len(line):
        m = _PAIR.match(line, pos)
        if not m or m.end() == pos:
            return None
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        pairs.append((key, value))
        pos = m.end()
    return pairs


def parse_infotext(text: str) -> dict[str, str]:
    """Inverse of `infotext`, tolerant of other writers.

    Returns ``prompt``, ``negative_prompt`` ("" when absent) and every "Key: value" setting as
    text, unquoted. The settings line is the last line when it starts with ``Steps:`` or holds
    at least three pairs (A1111's own rule of thumb).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    settings: list[tuple[str, str]] = []
    if lines:
        pairs = _parse_pairs(lines[-1].strip())
        if pairs and (lines[-1].lstrip().startswith("Steps:") or len(pairs) >= 3):
            settings = pairs
            lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith("Negative prompt:"):
            negative_lines = [line[len("Negative prompt:") :].lstrip(" ")]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    out = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines or [])}
    out.update(settings)
    return out


def comfy_name(label: str, names: Mapping[str, str]) -> str:
    key = label.strip().lower()
    if key in names:
        return names[key]
    # Already a ComfyUI name, or an unknown label: "DPM++ 2M" -> "dpmpp_2m" style.
    return re.sub(r"\s+", "_", key.replace("++", "pp"))


def sampler_name(label: str) -> str:
    """An A1111 sampler label (or a ComfyUI name) -> the ComfyUI name."""
    return comfy_name(label, _SAMPLER_NAMES)


def scheduler_name(label: str) -> str:
    return comfy_name(label, _SCHEDULER_NAMES)


_STANDARD = {
    "Steps": ("steps", int),
    "CFG scale": ("cfg", float),
    "Seed": ("seed", int),
    "Model hash": ("model_hash", str),
    "Model": ("model", str),
    "Shift": ("shift", float),
    "Denoising strength": ("denoise", float),
    "Batch size": ("batch_size", int),
}
_DROPPED = {"Batch pos"}  # describes one file, not the recipe


def settings_from_pairs(pairs: Mapping[str, str], *, where: str = "A1111 parameters") -> tuple[dict, list]:
    """Labelled setting pairs -> ({flat setting or grid: typed value}, [unknown (key, value) pairs])."""
    settings: dict[str, Any] = {}
    grid: list[GridAxis] = []
    unknown: list[tuple[str, str]] = []
    for key, value in pairs.items():
        if key in GRID_LABELS:
            grid.append(GridAxis.parse(value))
            continue
        spec = _BY_LABEL.get(key.lower())
        if spec is None:
            unknown.append((key, value))
            continue
        name, parse = spec
        try:
            settings[name] = parse(value.strip())
        except ValueError:
            raise AnimaError(f"{where}: cannot read {key} {value!r}") from None
    if grid:
        settings["grid"] = tuple(grid)
    return settings, unknown


def recipe_from_infotext(params: Mapping[str, str]) -> Recipe:
    """A `Recipe` from `parse_infotext` output; unknown settings land in `extra`."""
    fields: dict[str, Any] = {"negative_prompt": params.get("negative_prompt", "")}
    sampler = params.get("Sampler")
    scheduler = params.get("Schedule type")
    if sampler and not scheduler and sampler.lower() not in _SAMPLER_NAMES:
        # Before A1111 1.9 the schedule was part of the label: "DPM++ 2M Karras".
        head, _, tail = sampler.rpartition(" ")
        if head and tail.lower() in _SCHEDULER_NAMES:
            sampler, scheduler = head, tail
    if sampler:
        fields["sampler"] = sampler_name(sampler)
    if scheduler and scheduler.lower() != "automatic":
        fields["scheduler"] = scheduler_name(scheduler)
    params = dict(params)
    if "Hires upscale" in params and "Denoising strength" in params:
        # In an A1111 hires-fix PNG the denoising strength belongs to the second pass, not img2img.
        strength = params.pop("Denoising strength")
        params.setdefault("Hires denoise", strength)
    rest: dict[str, str] = {}
    for key, value in params.items():
        if key in ("prompt", "negative_prompt", "Sampler", "Schedule type") or key in _DROPPED:
            continue
        if key == "Size":
            m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", value)
            if not m:
                raise AnimaError(f"A1111 parameters: bad Size {value!r}")
            fields["width"], fields["height"] = int(m.group(1)), int(m.group(2))
        elif key in _STANDARD:
            name, kind = _STANDARD[key]
            try:
                fields[name] = kind(value)
            except ValueError:
                raise AnimaError(f"A1111 parameters: {key} {value!r} is not a {kind.__name__}") from None
        elif key == "Regions":
            try:
                items = json.loads(value)
            except json.JSONDecodeError:
                raise AnimaError(f"A1111 parameters: Regions {value!r:.60} is not a JSON list") from None
            if not isinstance(items, list):
                raise AnimaError("A1111 parameters: Regions is not a JSON list")
            fields["regions"] = tuple(Region.from_dict(d) for d in items)
        elif key == "Loras":
            fields["loras"] = tuple(_parse_lora(item) for item in value.split(", ") if item.strip())
        else:
            rest[key] = value
    controls, rest = controls_from_pairs(rest)
    settings, unknown = settings_from_pairs(rest)
    fields["controls"] = controls
    return Recipe.make(params.get("prompt", ""), **fields, **settings, extra=tuple(unknown))


def _parse_lora(item: str) -> tuple[str, float]:
    name, _, weight = item.strip().rpartition(":")
    try:
        return (name, float(weight)) if name else (item.strip(), 1.0)
    except ValueError:
        return (item.strip(), 1.0)
