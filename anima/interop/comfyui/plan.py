"""A ComfyUI graph -> the anima recipes that make its output images (pure data, no torch).

Which outputs: the graph's ``SaveImage`` nodes (a graph without one: its ``PreviewImage`` nodes),
in id order; each is one `GraphJob`, named after its node. An output that shows no generated image
(a preview of an input picture) is skipped with a note. Each job's image is traced back through
its decode, sampler, model, prompts and latent into one `Recipe`:

- KSampler: steps, CFG, sampler, scheduler, seed, denoise; KSamplerAdvanced: the same plus
  ``recipe.advanced`` (add_noise, start / end step, leftover noise);
- the model chain: LoRAs in order (``recipe.loras``, with ComfyUI's key rule), ModelSamplingAuraFlow
  (``shift``, default 3), CFGZeroStar (``guidance``);
- the negative's ConditioningZeroOut (``comfy.zero_negative``);
- AnimaLLLiteApply: a control unit each; a control image or mask the graph computes from its files
  (resizes, Canny, ImageInvert, Painter) is a `Derived` of the job, which the runner makes and
  records in the unit (`anima.jobs.comfy_graph.derive_controls`); the plan stays free of pixels;
- the latent: an empty latent (size, batch), a VAEEncode of a loaded picture (img2img: the file,
  how it was resized before VAEEncode), with SetLatentNoiseMask (a mask file and channel, ComfyUI's
  noise-mask semantics); a sampler -> LatentUpscale -> sampler chain is a hires fix when anima's
  hires pass computes the same thing, and an error that says what differs otherwise.

Anything the recipe cannot say is a one-line error naming the node; nothing is dropped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as _replace
from pathlib import PurePosixPath

from anima.errors import AnimaError
from anima.interop.comfyui import values as V
from anima.interop.comfyui.evaluate import Env, Evaluator
from anima.interop.comfyui.graph import Graph, Node
from anima.interop.comfyui.node_rules import RULES
from anima.recipe import ControlUnit, Recipe
from anima.recipe.image_ops import format_ops

HIRES_METHODS = {"nearest-exact": "latent-nearest-exact", "bilinear": "latent-bilinear"}
HIRES_MULTIPLE = 16  # anima's hires passes land on multiples of 16 (anima.workflows.hires)


@dataclass(frozen=True)
class ModelFiles:
    """The model files a job's nodes name (ComfyUI names, relative to their models/ folders)."""

    unet: str
    clip: str
    vae: str
    unet_from_checkpoint: bool = False
    clip_from_checkpoint: bool = False
    vae_from_checkpoint: bool = False


DERIVED = "(derived by the graph)"  # a unit's image / mask until the runner has made it


@dataclass(frozen=True)
class Derived:
    """A control picture (`what` "image") or mask ("mask") that the graph computes: control `unit`'s,
    to be made by the runner (`anima.jobs.comfy_pictures`) and recorded in the unit. The
    value's file names are already paths (LoadImage's and Painter's files, found at planning)."""

    unit: int
    what: str
    value: V.Picture | V.PainterMask


@dataclass(frozen=True)
class GraphJob:
    """One output node's image(s): the recipe, the files it needs, and what mapping decided."""

    output: str  # the output node's id
    title: str
    recipe: Recipe
    files: ModelFiles
    init_image: str = ""  # LoadImage names (the recipe holds the resolved paths)
    mask: str = ""
    notes: tuple[str, ...] = ()
    derived: tuple[Derived, ...] = ()


@dataclass(frozen=True)
class GraphPlan:
    jobs: tuple[GraphJob, ...]
    notes: tuple[str, ...] = field(default=())


def _natural(node_id: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", node_id))


def output_nodes(graph: Graph) -> list[Node]:
    """The SaveImage nodes in id order; the PreviewImage nodes when there is no SaveImage."""
    for kind in ("SaveImage", "PreviewImage"):
        found = sorted(
            (n for n in graph.nodes.values() if n.class_type == kind), key=lambda n: _natural(n.id)
        )
        if found:
            return found
    return []


def plan_graph(
    graph: Graph, image_size: Callable[[str], tuple[int, int]], image_path: Callable[[str], str]
) -> GraphPlan:
    """The jobs of a graph. `image_size(name)` / `image_path(name)`: a LoadImage file's size and path."""
    outputs = output_nodes(graph)
    if not outputs:
        raise AnimaError("the graph has no SaveImage or PreviewImage node: nothing to make")
    env = Env(image_size)
    ev = Evaluator(graph, env, RULES)
    jobs, notes = [], list(graph.notes)
    for out in outputs:
        images = ev.run(out.id)[0]
        if not isinstance(images, V.Decoded):
            notes.append(f"{out.label} shows no generated image (an input picture): skipped")
            continue
        said = len(env.notes)
        job = _job(out, images, image_path)
        jobs.append(job)
        notes += [n for n in env.notes[said:] if n not in notes]
    if not jobs:
        raise AnimaError("no output of the graph shows a generated image: nothing to make")
    return GraphPlan(tuple(jobs), tuple(dict.fromkeys(notes)))


def _job(out: Node, decoded: V.Decoded, image_path: Callable[[str], str]) -> GraphJob:
    latent = decoded.latent
    if not isinstance(latent, V.Sampled):
        raise AnimaError(
            f"{decoded.node} decodes a latent that no sampler made; anima makes images by sampling"
        )
    first, hires = latent, None
    if isinstance(latent.latent, V.Upscaled | V.Sampled):
        first, hires = _hires(latent)
    fields, files, init, mask, derived = _fields(first, decoded, image_path)
    if hires:
        fields.update(hires)
    try:
        recipe = Recipe.make(fields.pop("prompt"), **fields).validate()
    except AnimaError as exc:
        raise AnimaError(f"{first.node}: {exc}", setting=exc.setting) from None
    return GraphJob(out.id, out.title or out.class_type, recipe, files, init, mask, derived=derived)


def _fields(
    sampled: V.Sampled, decoded: V.Decoded, image_path
) -> tuple[dict, ModelFiles, str, str, tuple[Derived, ...]]:
    s, where = sampled.sampling, sampled.node
    m, pos, neg = s.model, s.positive, s.negative
    if V.content(pos.clip) != V.content(neg.clip):
        raise AnimaError(f"{where}: its positive and negative prompts use different text encoders")
    if pos.zeroed:
        raise AnimaError(f"{pos.node} zeroes the positive prompt; anima zeroes only the negative")
    clip = pos.clip
    fields: dict = {
        "prompt": pos.text, "negative_prompt": neg.text, "steps": s.steps, "cfg": s.cfg,
        "sampler": s.sampler, "scheduler": s.scheduler, "seed": s.seed, "shift": m.shift or 3.0,
        "model": PurePosixPath(m.unet.replace("\\", "/")).stem,
    }  # fmt: skip
    if m.guidance != "cfg":
        fields["guidance"] = m.guidance
    if m.loras or clip.loras:
        fields |= {"loras": m.loras, "lora_keys": "comfyui", "clip_loras": clip.loras}
    if neg.zeroed:
        fields["zero_negative"] = True
    if s.advanced:
        fields |= {"add_noise": s.add_noise, "start_step": s.start_step, "end_step": s.end_step,
                   "leftover_noise": s.leftover_noise}  # fmt: skip
    else:
        fields["denoise"] = s.denoise
    if decoded.tiled:
        fields["tiled_vae"] = "on"
    derived: list[Derived] = []
    if m.controls:
        fields["controls"] = tuple(
            _control(i, c, m.shift or 3.0, image_path, derived) for i, c in enumerate(m.controls)
        )
        fields |= _mask_channel(m.controls, sampled.latent)
    init = mask = ""
    latent = sampled.latent
    if isinstance(latent, V.Masked):
        if not isinstance(latent.latent, V.Encoded):
            raise AnimaError(f"{latent.node}: anima masks only an encoded picture (VAEEncode) here")
        mask = latent.mask.name
        fields |= {"mask": image_path(mask), "mask_channel": latent.mask.channel, "noise_mask": True,
                   "mask_blur": 0}  # fmt: skip
        latent = latent.latent
    width, height = V.latent_size(latent)
    fields |= {"width": width, "height": height}
    if isinstance(latent, V.Encoded):
        if V.content(latent.vae) != V.content(decoded.vae):
            raise AnimaError(f"{latent.node} and {decoded.node} use different VAEs; anima runs one")
        init = latent.picture.name
        fields |= {"init_image": image_path(init), "init_resize": format_ops(latent.picture.ops)}
    elif isinstance(latent, V.Empty):
        fields["batch_size"] = latent.batch
        if not s.advanced and s.denoise < 1.0:
            raise AnimaError(
                f"{where}: denoise {s.denoise:g} on an empty latent; anima needs an init image for that"
            )
    else:
        raise AnimaError(
            f"{where}: its latent comes from {getattr(latent, 'node', '?')}, which anima cannot start from"
        )
    files = ModelFiles(
        m.unet, clip.name, decoded.vae.name, m.checkpoint, clip.checkpoint, decoded.vae.checkpoint
    )
    return fields, files, init, mask, tuple(derived)


def _rebased(percent: float, applied: float, final: float) -> float:
    """The percent at shift `final` with the sigma that `percent` has at shift `applied`
    (sigma(t) = s t / (1 + (s - 1) t), t = 1 - percent)."""
    if applied == final or percent <= 0 or percent >= 1:
        return percent
    t = 1.0 - percent
    sigma = applied * t / (1 + (applied - 1) * t)
    return 1.0 - sigma / (final - (final - 1) * sigma)


def _mask_channel(controls: tuple[V.Control, ...], latent) -> dict:
    """The control masks' channel (LoadImage's alpha, a LoadImageMask colour) as the recipe's one
    `mask_channel`, which the init mask shares: masks read from different channels are refused."""
    # A derived mask (Painter's) is written so that every channel reads it (comfy_pictures).
    channels = {c.mask.channel for c in controls if isinstance(c.mask, V.Mask)}
    if isinstance(latent, V.Masked):
        channels.add(latent.mask.channel)
    if len(channels) > 1:
        raise AnimaError(f"the graph's masks come from different channels ({', '.join(sorted(channels))}); "
                         "anima reads every mask of a run from one channel")  # fmt: skip
    return {"mask_channel": channels.pop()} if channels else {}


def _found(name: str, node: str, image_path) -> str:
    try:
        return image_path(name)
    except AnimaError as exc:
        raise AnimaError(f"{node}: {exc}" if not str(exc).startswith(node) else str(exc)) from None


def _with_paths(p: V.Picture, image_path) -> V.Picture:
    """`p` with its LoadImage name and its Painter files as paths."""
    ops = tuple(
        _replace(op, file=_found(op.file, op.node, image_path)) if isinstance(op, V.Paint) and op.file else op
        for op in p.ops
    )
    name = _found(p.name, p.node, image_path) if p.name else ""
    return _replace(p, name=name, ops=ops)


def _control(i: int, c: V.Control, shift: float, image_path, derived: list[Derived]) -> ControlUnit:
    """One AnimaLLLiteApply as a recipe control unit (ComfyUI's graph path ignores a mask given to a
    3-channel patch; the unit keeps it and the patch decides). A computed image or mask goes into
    `derived` and the unit holds `DERIVED` until the runner has made it."""
    if c.picture.derived:
        derived.append(Derived(i, "image", _with_paths(c.picture, image_path)))
        image = DERIVED
    else:
        image = image_path(c.picture.name)
    mask = ""
    if isinstance(c.mask, V.PainterMask):
        m = c.mask
        file = _found(m.file, m.node, image_path) if m.file else ""
        derived.append(Derived(i, "mask", _replace(m, base=_with_paths(m.base, image_path), file=file)))
        mask = DERIVED
    elif c.mask is not None:
        mask = image_path(c.mask.name)
    return ControlUnit(
        model=c.patch.name, image=image, mask=mask, strength=c.strength,
        start=_rebased(c.start, c.shift, shift), end=_rebased(c.end, c.shift, shift),
    )  # fmt: skip


def _snap(value: float) -> int:
    """anima's hires size rule: the nearest multiple of 16, halves up (`anima.workflows.hires`)."""
    return max(HIRES_MULTIPLE, math.floor(value / HIRES_MULTIPLE + 0.5) * HIRES_MULTIPLE)


def _hires_scale(w0: int, h0: int, w1: int, h1: int) -> float | None:
    """The simplest scale (fewest decimals) whose snapped sides are (w1, h1), or None."""
    exact = sorted({w1 / w0, h1 / h0})
    for decimals in (1, 2, 3):
        step = 10**-decimals
        lo, hi = math.floor(exact[0] / step) - 1, math.ceil(exact[-1] / step) + 1
        for k in range(lo, hi + 1):
            s = round(k * step, decimals)
            if s > 1 and _snap(w0 * s) == w1 and _snap(h0 * s) == h1:
                return s
    return next((s for s in exact if s > 1 and _snap(w0 * s) == w1 and _snap(h0 * s) == h1), None)


def _hires(second: V.Sampled) -> tuple[V.Sampled, dict]:
    """(the first pass, the hires settings) for sampler -> LatentUpscale -> sampler, when anima's
    hires pass computes exactly that; else a one-line error saying what differs."""
    where = second.node
    up = second.latent
    if not isinstance(up, V.Upscaled):
        raise AnimaError(
            f"{where} samples the output of another sampler directly; anima runs two passes only as a "
            "hires fix (sampler -> LatentUpscale -> sampler)"
        )
    first = up.latent
    if not isinstance(first, V.Sampled):
        raise AnimaError(f"{up.node} upscales a latent no sampler made; anima cannot start from it")
    a, b = first.sampling, second.sampling
    why = []
    if a.advanced or b.advanced:
        why.append("both passes must be plain KSamplers")
    if V.content((a.model, a.positive, a.negative, a.seed, a.cfg)) != V.content(
        (b.model, b.positive, b.negative, b.seed, b.cfg)
    ):
        why.append("both passes must share model, prompts, seed and CFG")
    if not 0 < b.denoise < 1:
        why.append("the second pass needs a denoise below 1")
    if up.method not in HIRES_METHODS or up.crop != "disabled":
        why.append("the upscale must be nearest-exact or bilinear without crop")
    w0, h0 = V.latent_size(first.latent)
    w1, h1 = up.width * 8, up.height * 8
    scale = _hires_scale(w0, h0, w1, h1)
    if scale is None:
        why.append(f"no hires scale makes anima's passes go {w0}x{h0} -> {w1}x{h1} (sides snap to 16)")
    if why:
        raise AnimaError(f"{where}: this two-pass chain is not one anima runs: {'; '.join(why)}")
    hires: dict = {
        "hires_scale": scale, "hires_upscaler": HIRES_METHODS[up.method], "hires_steps": b.steps,
        "hires_denoise": b.denoise, "hires_max_step": min(4.0, max(1.75, scale)),
        "hires_max_side": max(2048, w1, h1),
    }  # fmt: skip
    if b.sampler != a.sampler:
        hires["hires_sampler"] = b.sampler
    if b.scheduler != a.scheduler:
        hires["hires_scheduler"] = b.scheduler
    return first, hires


__all__ = ["DERIVED", "Derived", "GraphJob", "GraphPlan", "ModelFiles", "output_nodes", "plan_graph"]
