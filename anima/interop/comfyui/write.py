"""A recipe -> the ComfyUI graph that makes the same image, in API (``prompt``) and UI (``workflow``)
format, from ComfyUI's core nodes only (their layouts are `node_defs`, checked by a test).

What is written: UNETLoader / CLIPLoader / VAELoader, the LoRAs (LoraLoaderModelOnly; a
text-encoder half as LoraLoader at model strength 0), ModelSamplingAuraFlow (a shift other than
3), CFGZeroStar, the two CLIPTextEncodes (ConditioningZeroOut on a zeroed negative), an
EmptyLatentImage or LoadImage (+ ImageScale per recorded resize) + VAEEncode
(+ LoadImage / LoadImageMask + SetLatentNoiseMask for a ComfyUI noise mask), KSampler or
KSamplerAdvanced, one hires pass as LatentUpscale + KSampler, VAEDecode (VAEDecodeTiled when
tiling is on) and SaveImage.

What has no core node, so that no graph is written (`GraphUnavailable` says which, rather than a
graph that makes another image): NAG, variation seeds, APG and rescale-CFG (ComfyUI's nodes compute
other formulas), CFG-Zero* zero-init steps, anima's inpainting (feathered mask, pixel composite,
only-masked crops), hires passes other than one nearest-exact / bilinear latent upscale, anima's
own init-image resizing (Lanczos in float) and crops of a recorded preparation, img2img batches,
prompt editing (``[a:b:0.5]``), the step cache, 8-bit weights, fp16 accumulation, grids.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from anima.errors import AnimaError
from anima.interop.comfyui.graph import Link
from anima.interop.comfyui.node_defs import node_def
from anima.recipe import Recipe
from anima.recipe.image_ops import Resize, parse_ops

OFFICIAL_FILES = ("qwen_3_06b_base.safetensors", "qwen_image_vae.safetensors")
DEFAULT_SHIFT = 3.0  # ComfyUI's model_sampling for Anima (supported_models.Anima)
_EDITING = re.compile(r"\[[^\[\]]*:[^\[\]]*\]|\[[^\[\]]*\|[^\[\]]*\]")
_HIRES_METHODS = {"latent-nearest-exact": "nearest-exact", "latent-bilinear": "bilinear"}


class GraphUnavailable(AnimaError):
    """The recipe uses a feature that ComfyUI's core nodes cannot reproduce."""


@dataclass(frozen=True)
class GraphFiles:
    """The ComfyUI names of the model files (relative to their models/ folders); `checkpoint`: one
    file holding all three (written as CheckpointLoaderSimple)."""

    unet: str
    clip: str = OFFICIAL_FILES[0]
    vae: str = OFFICIAL_FILES[1]
    checkpoint: str = ""


@dataclass
class _Node:
    id: int
    class_type: str
    inputs: dict[str, Any]
    title: str = ""


@dataclass
class _Builder:
    nodes: list[_Node] = field(default_factory=list)

    def add(self, class_type: str, title: str = "", **inputs: Any) -> Link:
        spec = node_def(class_type)
        assert spec is not None, class_type  # the writer writes only nodes of node_defs.json
        node = _Node(len(self.nodes) + 1, class_type, inputs, title)
        self.nodes.append(node)
        return Link(str(node.id), 0)


LoraFits = Callable[[str], bool]  # LoRA name -> whether ComfyUI's loader applies all of its keys


def _unavailable(recipe: Recipe, image_size, lora_fits: LoraFits | None) -> list[str]:
    why = []
    if recipe.loras and recipe.comfy.lora_keys == "all":
        # anima's own loader reads every key format; ComfyUI's applies only its names for Anima.
        if lora_fits is None or not all(lora_fits(name) for name, _ in recipe.loras):
            why.append("a LoRA whose keys ComfyUI's loader would not all apply")
    if recipe.nag.on:
        why.append("NAG")
    if recipe.variation.on:
        why.append("variation seeds")
    g = recipe.guidance
    if g.kind in ("apg", "rescale-cfg"):
        why.append(f"{g.kind} guidance (ComfyUI's node computes another formula)")
    if g.kind == "cfg-zero-star" and g.zero_init_steps:
        why.append("CFG-Zero* zero-init steps")
    h = recipe.hires
    if h.on:
        if h.upscaler not in _HIRES_METHODS:
            why.append(f"the {h.upscaler} hires upscaler")
        elif h.scale > h.max_step:  # anima.workflows.hires splits it into several passes
            why.append("hires fix in more than one pass")
    if recipe.sources.mask and not recipe.comfy.noise_mask:
        why.append("anima's inpainting (feathered mask, composite)")
    if recipe.sources.init_image:
        ops = parse_ops(recipe.comfy.init_resize)
        if any(not isinstance(op, Resize) for op in ops):
            why.append("a cropped init image")
        if not recipe.comfy.init_resize:
            size = image_size(recipe.sources.init_image) if image_size is not None else None
            w, h2 = size if size is not None else (0, 0)
            if (w - w % 8, h2 - h2 % 8) != (recipe.width, recipe.height):
                why.append("anima's init-image resizing")
        if recipe.batch_size > 1:
            why.append("an img2img batch")
    for text in (recipe.prompt, recipe.negative_prompt):
        if _EDITING.search(text):
            why.append("prompt editing")
            break
    p = recipe.perf
    if p.step_cache:
        why.append("the step cache")
    if p.weights:
        why.append(f"{p.weights} weights")
    if p.fp16_accumulation:
        why.append("fp16 accumulation")
    if recipe.grid:
        why.append("a grid")
    return why


def _loaders(b: _Builder, files: GraphFiles) -> tuple[Link, Link, Link]:
    if files.checkpoint:
        ckpt = b.add("CheckpointLoaderSimple", ckpt_name=files.checkpoint)
        return ckpt, Link(ckpt.node, 1), Link(ckpt.node, 2)
    model = b.add("UNETLoader", "Load Diffusion Model", unet_name=files.unet, weight_dtype="default")
    clip = b.add("CLIPLoader", "Load CLIP", clip_name=files.clip, type="stable_diffusion", device="default")
    return model, clip, b.add("VAELoader", "Load VAE", vae_name=files.vae)


def _model(b: _Builder, recipe: Recipe, model: Link, clip: Link) -> tuple[Link, Link]:
    for name, strength in recipe.loras:
        model = b.add("LoraLoaderModelOnly", lora_name=name, strength_model=strength, model=model)
    for name, strength in recipe.comfy.clip_loras:
        lora = b.add(
            "LoraLoader", lora_name=name, strength_model=0.0, strength_clip=strength, model=model, clip=clip
        )
        model, clip = lora, Link(lora.node, 1)
    if recipe.shift != DEFAULT_SHIFT:
        model = b.add("ModelSamplingAuraFlow", shift=recipe.shift, model=model)
    if recipe.guidance.kind == "cfg-zero-star":
        model = b.add("CFGZeroStar", model=model)
    return model, clip


def _latent(b: _Builder, recipe: Recipe, vae: Link) -> Link:
    src = recipe.sources
    if not src.init_image:
        return b.add(
            "EmptyLatentImage", width=recipe.width, height=recipe.height, batch_size=recipe.batch_size
        )
    image = b.add("LoadImage", image=PurePath(src.init_image).name)
    loaded = image
    for op in parse_ops(recipe.comfy.init_resize):
        image = b.add(
            "ImageScale",
            upscale_method=op.method,
            width=op.width,
            height=op.height,
            crop=op.crop,
            image=image,
        )
    latent = b.add("VAEEncode", pixels=image, vae=vae)
    if src.mask:
        channel = recipe.comfy.mask_channel or "red"  # luminance has no node; a grey mask's red is it
        if channel == "alpha" and PurePath(src.mask).name == PurePath(src.init_image).name:
            mask = Link(loaded.node, 1)
        else:
            mask = b.add("LoadImageMask", image=PurePath(src.mask).name, channel=channel)
        latent = b.add("SetLatentNoiseMask", samples=latent, mask=mask)
    return latent


def _sampler(b: _Builder, recipe: Recipe, model: Link, pos: Link, neg: Link, latent: Link) -> Link:
    a = recipe.advanced
    common = {"cfg": recipe.cfg, "sampler_name": recipe.sampler, "scheduler": recipe.scheduler}
    if a.on:
        return b.add(
            "KSamplerAdvanced", add_noise="enable" if a.add_noise else "disable", noise_seed=recipe.seed,
            steps=recipe.steps, **common, start_at_step=a.start_step, end_at_step=a.end_step,
            return_with_leftover_noise="enable" if a.leftover_noise else "disable",
            model=model, positive=pos, negative=neg, latent_image=latent,
        )  # fmt: skip
    return b.add(
        "KSampler", seed=recipe.seed, steps=recipe.steps, **common, denoise=recipe.denoise,
        model=model, positive=pos, negative=neg, latent_image=latent,
    )  # fmt: skip


def _hires(b: _Builder, recipe: Recipe, model: Link, pos: Link, neg: Link, latent: Link) -> Link:
    h = recipe.hires
    w, hh = (max(16, int(v * h.scale / 16 + 0.5) * 16) for v in (recipe.width, recipe.height))
    up = b.add(
        "LatentUpscale",
        upscale_method=_HIRES_METHODS[h.upscaler],
        width=w,
        height=hh,
        crop="disabled",
        samples=latent,
    )
    return b.add(
        "KSampler", seed=recipe.seed, steps=h.steps or recipe.steps, cfg=recipe.cfg,
        sampler_name=h.sampler or recipe.sampler, scheduler=h.scheduler or recipe.scheduler,
        denoise=h.denoise,
        model=model, positive=pos, negative=neg, latent_image=up,
    )  # fmt: skip


def _build(
    recipe: Recipe, files: GraphFiles | None, image_size, lora_fits: LoraFits | None = None
) -> _Builder:
    why = _unavailable(recipe, image_size, lora_fits)
    if why:
        raise GraphUnavailable(f"no ComfyUI graph: {', '.join(dict.fromkeys(why))} has no ComfyUI core node")
    files = files or GraphFiles(f"{recipe.model or 'anima-base-v1.0'}.safetensors")
    b = _Builder()
    model, clip, vae = _loaders(b, files)
    model, clip = _model(b, recipe, model, clip)
    pos = b.add("CLIPTextEncode", "CLIP Text Encode (Positive Prompt)", text=recipe.prompt, clip=clip)
    neg = b.add(
        "CLIPTextEncode", "CLIP Text Encode (Negative Prompt)", text=recipe.negative_prompt, clip=clip
    )
    if recipe.comfy.zero_negative:
        neg = b.add("ConditioningZeroOut", conditioning=neg)
    latent = _sampler(b, recipe, model, pos, neg, _latent(b, recipe, vae))
    if recipe.hires.on:
        latent = _hires(b, recipe, model, pos, neg, latent)
    if recipe.perf.tiled_vae == "on":
        image = b.add("VAEDecodeTiled", samples=latent, vae=vae, tile_size=512, overlap=64, temporal_size=64,
                      temporal_overlap=8)  # fmt: skip
    else:
        image = b.add("VAEDecode", samples=latent, vae=vae)
    b.add("SaveImage", filename_prefix="anima", images=image)
    return b


def api_graph(
    recipe: Recipe,
    files: GraphFiles | None = None,
    image_size: Callable[[str], tuple[int, int]] | None = None,
    lora_fits: LoraFits | None = None,
) -> dict[str, Any]:
    """The API-format graph (``prompt``); `GraphUnavailable` when the recipe has no core-node form.
    `image_size(path)`: the init image's size, to tell whether anima resized it; `lora_fits(name)`:
    whether ComfyUI applies all of a LoRA's keys (`anima.lora.comfy_keys`); None: unknown."""
    out = {}
    for n in _build(recipe, files, image_size, lora_fits).nodes:
        inputs = {k: [v.node, v.slot] if isinstance(v, Link) else v for k, v in n.inputs.items()}
        out[str(n.id)] = {
            "inputs": inputs,
            "class_type": n.class_type,
            "_meta": {"title": n.title or n.class_type},
        }
    return out


def _widget_values(n: _Node) -> list:
    spec = node_def(n.class_type)
    values: list = []
    for d in spec.widgets:
        if d.name not in n.inputs:
            continue
        values.append(n.inputs[d.name])
        if d.spec.get("control_after_generate"):
            values.append("fixed")
        if d.type == "COMBO" and d.spec.get("image_upload"):
            values.append("image")
    return values


def ui_graph(
    recipe: Recipe,
    files: GraphFiles | None = None,
    image_size: Callable[[str], tuple[int, int]] | None = None,
    lora_fits: LoraFits | None = None,
) -> dict[str, Any]:
    """The UI-format workflow (``workflow``) of the same graph, laid out in columns."""
    nodes = _build(recipe, files, image_size, lora_fits).nodes
    links: list[list] = []
    ui_nodes = []
    outgoing: dict[tuple[int, int], list[int]] = {}
    for n in nodes:
        spec = node_def(n.class_type)
        inputs = []
        for d in spec.inputs:
            v = n.inputs.get(d.name)
            if isinstance(v, Link):
                link_id = len(links) + 1
                links.append([link_id, int(v.node), v.slot, n.id, len(inputs), d.type])
                outgoing.setdefault((int(v.node), v.slot), []).append(link_id)
                inputs.append({"name": d.name, "type": d.type, "link": link_id})
        ui_nodes.append((n, spec, inputs))
    out_nodes = []
    for order, (n, spec, inputs) in enumerate(ui_nodes):
        names = spec.output_names or spec.outputs
        outputs = [
            {"name": names[i] if i < len(names) else t, "type": t, "links": outgoing.get((n.id, i)) or None}
            for i, t in enumerate(spec.outputs)
        ]
        out_nodes.append({
            "id": n.id, "type": n.class_type, "pos": [60 + 340 * (order // 4), 60 + 220 * (order % 4)],
            "size": [315, 180], "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "title": n.title or n.class_type, "properties": {"Node name for S&R": n.class_type},
            "widgets_values": _widget_values(n),
        })  # fmt: skip
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "anima:" + recipe.to_json())), "revision": 0,
        "last_node_id": len(nodes), "last_link_id": len(links), "nodes": out_nodes, "links": links,
        "groups": [], "config": {}, "extra": {"written_by": "anima"}, "version": 0.4,
    }  # fmt: skip
