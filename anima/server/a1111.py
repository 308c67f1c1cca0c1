"""A1111 API vocabulary <-> anima: sampler and scheduler labels, request fields, the `info` JSON.

A1111 clients send every field A1111 knows, mostly at its defaults. Fields anima does not use
are accepted; those set to something other than their A1111 default (and every field A1111
itself does not know) are reported in `info["notes"]`, so a client can see what had no effect.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Collection, Mapping
from typing import Any

from anima.errors import AnimaError
from anima.interop.a1111 import SAMPLER_LABELS, SCHEDULER_LABELS, infotext
from anima.recipe import DEFAULT_NEGATIVE, Recipe

VERSION = "anima-serve/1"

# Fields A1111 knows and anima does not use, with the values that mean "off" there.
_INERT: Mapping[str, tuple] = {
    "styles": ([],), "subseed": (-1, 0, None), "subseed_strength": (0, 0.0, None),
    "seed_resize_from_h": (-1, 0, None), "seed_resize_from_w": (-1, 0, None),
    "restore_faces": (False, None), "tiling": (False, None), "do_not_save_samples": (False, True, None),
    "do_not_save_grid": (False, True, None), "eta": (None, 0, 1, 1.0, 0.0), "s_min_uncond": (0, 0.0, None),
    "s_churn": (0, 0.0, None), "s_tmax": (0, 0.0, None, float("inf")), "s_tmin": (0, 0.0, None),
    "s_noise": (1, 1.0, None), "override_settings_restore_afterwards": (True, False, None),
    "refiner_checkpoint": (None, ""), "refiner_switch_at": (None, 0, 0.0),
    "disable_extra_networks": (False, None),
    "comments": (None, {}), "enable_hr": (False, None), "script_name": (None, ""), "script_args": ([], None),
    "alwayson_scripts": ({}, None), "force_task_id": (None, ""), "infotext": (None, ""),
    "firstpass_image": (None, ""), "initial_noise_multiplier": (1, 1.0, None), "latent_mask": (None, ""),
    "image_cfg_scale": None, "sampler_index": None, "include_init_images": None,
}  # fmt: skip
# Hires-fix settings: used with enable_hr by `anima.server.a1111_hires` (which notes what it cannot
# honour); txt2img's denoising_strength is the hires pass's.
_HIRES = {
    "denoising_strength", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler",
    "hr_second_pass_steps", "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name",
    "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_additional_modules", "hr_cfg", "hr_distilled_cfg",
}  # fmt: skip


def sampler_items(available: Collection[str]) -> list[dict[str, Any]]:
    """/sdapi/v1/samplers: A1111 labels as names, ComfyUI names as aliases (one entry per label)."""
    out: dict[str, dict[str, Any]] = {}
    for name in available:
        label = SAMPLER_LABELS.get(name, name)
        item = out.setdefault(label, {"name": label, "aliases": [], "options": {}})
        item["aliases"].append(name)
    return list(out.values())


def scheduler_items(available: Collection[str]) -> list[dict[str, Any]]:
    items = [{"name": "automatic", "label": "Automatic", "aliases": None}]
    for name in available:
        items.append({"name": name, "label": SCHEDULER_LABELS.get(name, name), "aliases": None})
    return items


def _by_label(labels: Mapping[str, str], available: Collection[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in available:  # first name wins: CPU samplers come before their *_gpu twins
        out.setdefault(labels.get(name, name).lower(), name)
        out.setdefault(name.lower(), name)
    return out


def resolve_sampler(
    label: str | None, scheduler: str | None, samplers: Collection[str], schedulers: Collection[str]
) -> tuple[str | None, str | None]:
    """(ComfyUI sampler, scheduler) for A1111 names; None keeps the recipe default."""
    sampler_names = _by_label(SAMPLER_LABELS, samplers)
    scheduler_names = _by_label(SCHEDULER_LABELS, schedulers)
    sampler = None
    if label:
        key = label.strip().lower()
        if key not in sampler_names and not scheduler:
            # Before A1111 1.9 the schedule was part of the label: "DPM++ 2M Karras".
            head, _, tail = key.rpartition(" ")
            if head in sampler_names and tail in scheduler_names:
                key, scheduler = head, tail
        if key not in sampler_names:
            labels = sorted({SAMPLER_LABELS.get(n, n) for n in samplers})
            raise AnimaError(f"unknown sampler {label!r}; choose from: {', '.join(labels)}")
        sampler = sampler_names[key]
    sched = None
    if scheduler and scheduler.strip().lower() != "automatic":
        key = scheduler.strip().lower()
        if key not in scheduler_names:
            raise AnimaError(
                f"unknown scheduler {scheduler!r}; choose from: automatic, {', '.join(schedulers)}"
            )
        sched = scheduler_names[key]
    return sampler, sched


def ignored_notes(req, *, img2img: bool) -> list[str]:
    """Notes for every field that has no effect here (see the module docstring)."""
    notes = []
    extra = dict(req.model_extra or {})
    if img2img and extra.get("enable_hr"):
        notes.append("enable_hr (hires fix) applies to txt2img only and was ignored")
    for key, value in extra.items():
        if key in _HIRES and not (img2img and key == "denoising_strength"):
            continue
        if key == "alwayson_scripts" and isinstance(value, dict):
            # ControlNet units are honoured (anima.server.controls); other scripts are not.
            others = [name for name in value if name.lower() != "controlnet"]
            for name in others:
                notes.append(f"alwayson_scripts.{name} is not supported and was ignored")
            continue
        if key in _INERT:
            inert = _INERT[key]
            if inert is None or key == "enable_hr" or _is_inert(value, inert):
                continue
            notes.append(f"{key}={json.dumps(value, default=str)[:60]} is not supported and was ignored")
        else:
            notes.append(f"unknown field {key!r} was ignored")
    for key in req.override_settings or {}:
        if key != "sd_model_checkpoint":
            notes.append(f"override_settings.{key} is not supported and was ignored")
    if req.save_images:
        notes.append("save_images: every image is saved in the server's history anyway")
    return notes


def _is_inert(value: Any, inert: tuple) -> bool:
    for v in inert:
        if isinstance(value, bool) or isinstance(v, bool):  # False == 0, but they mean different things
            if value is v:
                return True
        elif value == v:
            return True
    return False


def recipe_from_request(req, service, *, denoise: float = 1.0, size: tuple[int, int] | None = None) -> Recipe:
    """The Recipe for an A1111 txt2img/img2img request (before server limits are checked)."""
    sampler, scheduler = resolve_sampler(
        req.sampler_name or req.sampler_index, req.scheduler, service.samplers(), service.schedulers()
    )
    fields: dict[str, Any] = {
        "prompt": req.prompt,
        "negative_prompt": DEFAULT_NEGATIVE if req.negative_prompt is None else req.negative_prompt,
        "seed": secrets.randbits(32) if req.seed == -1 else req.seed,
        "batch_size": req.batch_size,
        "denoise": denoise,
    }
    for key, value in (("sampler", sampler), ("scheduler", scheduler), ("steps", req.steps),
                       ("cfg", req.cfg_scale), ("shift", req.shift)):  # fmt: skip
        if value is not None:
            fields[key] = value
    width, height = req.width, req.height
    if size is not None:
        width, height = width or size[0], height or size[1]
    if width is not None:
        fields["width"] = width
    if height is not None:
        fields["height"] = height
    model = (req.override_settings or {}).get("sd_model_checkpoint")
    if model is not None:
        if not isinstance(model, str):
            raise AnimaError("override_settings.sd_model_checkpoint must be a model name")
        fields["model"] = service.check_model(model)
    recipe = Recipe(**fields)
    recipe.validate(service.samplers(), service.schedulers())
    return recipe


def info_json(job, recipe_used: Recipe, n_images: int, notes: list[str], model_hash: str | None) -> str:
    """A1111's `info` string: a JSON object describing the images returned."""
    r = recipe_used
    per_iter = r.batch_size
    seeds = [(r.seed + i // per_iter) % 2**64 for i in range(n_images)]
    infotexts = [
        infotext(r.with_(seed=s), batch_pos=(i % per_iter) if per_iter > 1 else None)
        for i, s in enumerate(seeds)
    ]
    info = {
        "prompt": r.prompt, "all_prompts": [r.prompt] * n_images,
        "negative_prompt": r.negative_prompt, "all_negative_prompts": [r.negative_prompt] * n_images,
        "seed": r.seed, "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * n_images,
        "subseed_strength": 0, "width": r.width, "height": r.height,
        "sampler_name": SAMPLER_LABELS.get(r.sampler, r.sampler),
        "scheduler": SCHEDULER_LABELS.get(r.scheduler, r.scheduler),
        "cfg_scale": r.cfg, "steps": r.steps, "batch_size": r.batch_size, "restore_faces": False,
        "sd_model_name": r.model, "sd_model_hash": model_hash, "denoising_strength": r.denoise,
        "extra_generation_params": {"Shift": r.shift}, "index_of_first_image": 0,
        "infotexts": infotexts, "styles": [], "job_timestamp": _timestamp(job.created),
        "version": VERSION, "job_id": job.id, "status": job.status, "notes": notes,
    }  # fmt: skip
    return json.dumps(info, ensure_ascii=False)


def _timestamp(t: float) -> str:
    import time

    return time.strftime("%Y%m%d%H%M%S", time.localtime(t))
