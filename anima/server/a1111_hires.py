"""A1111's hires-fix request fields -> anima's hires workflow settings (`anima.recipe.settings`).

A1111 clients turn hires fix on with ``enable_hr`` and describe the second pass with ``hr_scale`` or
``hr_resize_x/y``, ``hr_upscaler``, ``hr_second_pass_steps``, ``denoising_strength``,
``hr_sampler_name`` and ``hr_scheduler``. anima runs the same idea (a latent or Lanczos upscale, then a
partial-denoise pass; spec'd in `anima.workflows.hires`), so these map onto its settings. Upscaler
models (ESRGAN, ...) found in the server's upscale_models/ folder are used by name; what has no
counterpart (an upscaler the server lacks, a separate hires prompt or CFG, another checkpoint) is
mapped to the nearest thing anima has or ignored, and always said in a note.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from anima.errors import AnimaError
from anima.server.a1111 import resolve_sampler

# A1111 upscaler names (lower case) -> anima's; anything else (ESRGAN, SwinIR, ...) becomes Lanczos.
_UPSCALERS = {
    "latent": "latent-bilinear",
    "latent (antialiased)": "latent-bilinear",
    "latent (bicubic)": "latent-bilinear",
    "latent (bicubic antialiased)": "latent-bilinear",
    "latent (nearest)": "latent-nearest-exact",
    "latent (nearest-exact)": "latent-nearest-exact",
    "lanczos": "lanczos",
}
_EXACT = {"latent", "latent (nearest-exact)", "lanczos"}  # the ones that are the same algorithm
DEFAULT_DENOISE = 0.7  # A1111's txt2img denoising_strength default, used for the hires pass


def hires_settings(
    extra: Mapping[str, Any],
    width: int,
    height: int,
    samplers: Collection[str],
    schedulers: Collection[str],
    upscalers: Collection[str] = (),
) -> tuple[dict[str, Any], list[str]]:
    """(flat hires settings, notes) for a txt2img request's extra fields; ({}, []) without enable_hr.
    `upscalers`: the upscaler model file names the server offers (``hr_upscaler`` may name one, with
    or without its suffix, as A1111 lists them)."""

    if not extra.get("enable_hr"):
        return {}, []
    notes: list[str] = []
    settings: dict[str, Any] = {"hires_scale": _scale(extra, width, height, notes)}
    name = str(extra.get("hr_upscaler") or "Latent")
    model = next((f for f in upscalers if name.strip() in (f, f.rsplit(".", 1)[0])), None)
    upscaler = model or _UPSCALERS.get(name.strip().lower(), "lanczos")
    if model is None and name.strip().lower() not in _EXACT:
        notes.append(f"hr_upscaler {name!r} is not available here: used {upscaler}")
    settings["hires_upscaler"] = upscaler
    # Ranges and types of these are checked by the recipe's `Hires` group when they are applied.
    settings["hires_steps"] = extra.get("hr_second_pass_steps") or 0
    denoise = extra.get("denoising_strength")
    settings["hires_denoise"] = DEFAULT_DENOISE if denoise is None else denoise
    sampler_label = extra.get("hr_sampler_name")
    if sampler_label in ("Use same sampler", ""):
        sampler_label = None
    scheduler_label = extra.get("hr_scheduler")
    if scheduler_label in ("Use same scheduler", ""):
        scheduler_label = None
    sampler, scheduler = resolve_sampler(sampler_label, scheduler_label, samplers, schedulers)
    settings["hires_sampler"] = sampler or ""
    settings["hires_scheduler"] = scheduler or ""
    for key, what in (("hr_prompt", "hires prompt"), ("hr_negative_prompt", "hires negative prompt")):
        if extra.get(key):
            notes.append(f"{key}: a separate {what} is not supported; the main one was used")
    if extra.get("hr_cfg") not in (None, 0, 0.0, 1, 1.0):  # Forge sends 1.0 when unused
        notes.append("hr_cfg: the hires pass uses the main cfg_scale")
    if extra.get("hr_checkpoint_name") not in (None, "", "Use same checkpoint"):
        notes.append("hr_checkpoint_name: the hires pass uses the same model")
    return settings, notes


def _scale(extra: Mapping[str, Any], width: int, height: int, notes: list[str]) -> Any:
    """A1111: hr_resize_x/y (0 = keep the aspect) win over hr_scale (default 2; range checked by
    the recipe's `Hires` group)."""
    rx, ry = extra.get("hr_resize_x") or 0, extra.get("hr_resize_y") or 0
    for key, v in (("hr_resize_x", rx), ("hr_resize_y", ry)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise AnimaError(f"{key} must be a whole number of pixels >= 0, got {v!r}")
    if rx or ry:
        sx, sy = (rx / width if rx else None), (ry / height if ry else None)
        scale = max(s for s in (sx, sy) if s is not None)
        if sx is not None and sy is not None and abs(sx - sy) > 0.01:
            notes.append(
                f"hr_resize {rx}x{ry} changes the aspect ratio: scaled by {scale:.3g} instead (no crop)"
            )
        return scale
    return extra.get("hr_scale", 2.0)
