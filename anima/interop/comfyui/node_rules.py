"""What each supported ComfyUI node computes, as `values` descriptions (the fixtures' commit).

One rule per node type: ``rule(evaluator, node) -> outputs``. The semantics are ComfyUI's (its
``nodes.py`` and ``comfy_extras``), recorded in the comfy-workflows fixture README where the
fixtures exercise them; sizes are computed here exactly as the nodes compute them, because they
decide the image. Nodes whose maths anima does not share say so in their one-line error instead of
running something else.
"""

from __future__ import annotations

import math
from dataclasses import replace as _replace

from anima.errors import AnimaError
from anima.interop.comfyui import values as V
from anima.interop.comfyui.evaluate import Evaluator, Rule
from anima.interop.comfyui.graph import Node
from anima.recipe.image_ops import IMAGE_METHODS, Crop, Resize

try:  # ControlNet-LLLite (issue 13): the graph nodes map onto its recipe units once it is there
    from anima.recipe import control as lllite
except ImportError:
    lllite = None

LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
_LLLITE = "ControlNet-LLLite (ModelPatchLoader + AnimaLLLiteApply) is being added to anima"


# ---------------------------------------------------------------------- loaders
def unet_loader(ev: Evaluator, n: Node) -> tuple:
    dtype = ev.text(n, "weight_dtype", "default")
    if dtype != "default":
        raise AnimaError(
            f"{n.label}: weight_dtype {dtype!r} stores the DiT in ComfyUI's fp8 formats, which anima "
            "does not reproduce; use 'default' (anima's own --weights fp8 is a different format)"
        )
    return (V.Model(ev.text(n, "unet_name"), n.label),)


def checkpoint_loader(ev: Evaluator, n: Node) -> tuple:
    name = ev.text(n, "ckpt_name")
    return V.Model(name, n.label, checkpoint=True), V.Clip(name, n.label, True), V.Vae(name, n.label, True)


def clip_loader(ev: Evaluator, n: Node) -> tuple:
    kind = ev.text(n, "type", "stable_diffusion")
    if kind != "stable_diffusion":
        raise AnimaError(
            f"{n.label}: type {kind!r} is not Anima's text encoder (Anima graphs load the Qwen3 file "
            "with type 'stable_diffusion')"
        )
    return (V.Clip(ev.text(n, "clip_name"), n.label),)


def vae_loader(ev: Evaluator, n: Node) -> tuple:
    name = ev.text(n, "vae_name")
    if name == "pixel_space":
        raise AnimaError(f"{n.label}: 'pixel_space' is not a VAE anima can run")
    return (V.Vae(name, n.label),)


def lora_model_only(ev: Evaluator, n: Node) -> tuple:
    model = ev.typed(n, "model", V.Model, "a MODEL")
    name, strength = ev.text(n, "lora_name"), ev.number(n, "strength_model")
    if strength == 0:  # ComfyUI returns the model untouched
        return (model,)
    return (_replace(model, loras=(*model.loras, (name, strength))),)


def lora_loader(ev: Evaluator, n: Node) -> tuple:
    model = ev.typed(n, "model", V.Model, "a MODEL")
    clip = ev.typed(n, "clip", V.Clip, "a CLIP")
    name = ev.text(n, "lora_name")
    sm, sc = ev.number(n, "strength_model"), ev.number(n, "strength_clip")
    if sm != 0:
        model = _replace(model, loras=(*model.loras, (name, sm)))
    if sc != 0:
        clip = _replace(clip, loras=(*clip.loras, (name, sc)))
    return model, clip


def model_sampling_aura_flow(ev: Evaluator, n: Node) -> tuple:
    model = ev.typed(n, "model", V.Model, "a MODEL")
    shift = ev.number(n, "shift")
    if shift <= 0:
        raise AnimaError(f"{n.label}: shift must be > 0 for anima, got {shift:g}")
    return (_replace(model, shift=shift),)


def cfg_zero_star(ev: Evaluator, n: Node) -> tuple:
    model = ev.typed(n, "model", V.Model, "a MODEL")
    return (_replace(model, guidance="cfg-zero-star"),)


def _different_maths(why: str) -> Rule:
    def rule(ev: Evaluator, n: Node) -> tuple:
        raise AnimaError(f"{n.label} is not supported: {why}")

    return rule


def _not_yet(why: str) -> Rule:
    def rule(ev: Evaluator, n: Node) -> tuple:
        raise AnimaError(f"{n.label} is not supported yet: {why}")

    return rule


def model_patch_loader(ev: Evaluator, n: Node) -> tuple:
    if lllite is None:
        raise AnimaError(f"{n.label} is not supported yet: {_LLLITE}")
    return (V.Patch(ev.text(n, "name"), n.label),)


def lllite_apply(ev: Evaluator, n: Node) -> tuple:
    """AnimaLLLiteApply: a control unit on the model, its window read with this model's shift."""
    if lllite is None:
        raise AnimaError(f"{n.label} is not supported yet: {_LLLITE}")
    model = ev.typed(n, "model", V.Model, "a MODEL")
    patch = ev.typed(n, "model_patch", V.Patch, "a MODEL_PATCH")
    picture = ev.typed(n, "image", V.Picture, "an IMAGE loaded from a file")
    if picture.filters or picture.ops:
        done = ", ".join((*picture.filters, *(op.text() for op in picture.ops)))
        raise AnimaError(
            f"{n.label}: its control image was changed first ({done}); give the control file as is"
        )
    mask = ev.get(n, "mask", None)
    if mask is not None and not isinstance(mask, V.Mask):
        raise AnimaError(f"{n.label}: input 'mask' must be a MASK from a file")
    strength, start, end = (ev.number(n, k) for k in ("strength", "start_percent", "end_percent"))
    unit = V.Control(patch, picture, mask, strength, start, end, model.shift or 3.0, n.label)
    return (_replace(model, controls=(*model.controls, unit)),)


# ---------------------------------------------------------------------- text
def clip_text_encode(ev: Evaluator, n: Node) -> tuple:
    clip = ev.typed(n, "clip", V.Clip, "a CLIP")
    return (V.Cond(ev.text(n, "text"), clip, n.label),)


def conditioning_zero_out(ev: Evaluator, n: Node) -> tuple:
    cond = ev.typed(n, "conditioning", V.Cond, "a CONDITIONING")
    return (_replace(cond, zeroed=True, node=n.label),)


# ---------------------------------------------------------------------- latents
def empty_latent(ev: Evaluator, n: Node) -> tuple:
    return (
        V.Empty(
            ev.number(n, "width", int),
            ev.number(n, "height", int),
            ev.number(n, "batch_size", int, 1),
            n.label,
        ),
    )


def ksampler(ev: Evaluator, n: Node) -> tuple:
    s = V.Sampling(
        model=ev.typed(n, "model", V.Model, "a MODEL"),
        positive=ev.typed(n, "positive", V.Cond, "a CONDITIONING"),
        negative=ev.typed(n, "negative", V.Cond, "a CONDITIONING"),
        seed=ev.number(n, "seed", int), steps=ev.number(n, "steps", int), cfg=ev.number(n, "cfg"),
        sampler=ev.text(n, "sampler_name"), scheduler=ev.text(n, "scheduler"),
        denoise=ev.number(n, "denoise", float, 1.0),
    )  # fmt: skip
    return (V.Sampled(s, _latent(ev, n, "latent_image"), n.label),)


def ksampler_advanced(ev: Evaluator, n: Node) -> tuple:
    s = V.Sampling(
        model=ev.typed(n, "model", V.Model, "a MODEL"),
        positive=ev.typed(n, "positive", V.Cond, "a CONDITIONING"),
        negative=ev.typed(n, "negative", V.Cond, "a CONDITIONING"),
        seed=ev.number(n, "noise_seed", int), steps=ev.number(n, "steps", int), cfg=ev.number(n, "cfg"),
        sampler=ev.text(n, "sampler_name"), scheduler=ev.text(n, "scheduler"), advanced=True,
        add_noise=ev.text(n, "add_noise") == "enable", start_step=ev.number(n, "start_at_step", int),
        end_step=ev.number(n, "end_at_step", int),
        leftover_noise=ev.text(n, "return_with_leftover_noise") == "enable",
    )  # fmt: skip
    return (V.Sampled(s, _latent(ev, n, "latent_image"), n.label),)


def _latent(ev: Evaluator, n: Node, name: str):
    return ev.typed(n, name, (V.Empty, V.Encoded, V.Masked, V.Sampled, V.Upscaled), "a LATENT")


def vae_encode(ev: Evaluator, n: Node) -> tuple:
    picture = ev.typed(n, "pixels", V.Picture, "an IMAGE loaded from a file")
    vae = ev.typed(n, "vae", V.Vae, "a VAE")
    if picture.filters:
        raise AnimaError(
            f"{n.label}: its image passed through {', '.join(picture.filters)}, whose pixels anima does not "
            "reproduce"
        )
    return (V.Encoded(picture, vae, n.label),)


def vae_decode(ev: Evaluator, n: Node) -> tuple:
    return (V.Decoded(_latent(ev, n, "samples"), ev.typed(n, "vae", V.Vae, "a VAE"), n.label),)


def vae_decode_tiled(ev: Evaluator, n: Node) -> tuple:
    latent, vae = _latent(ev, n, "samples"), ev.typed(n, "vae", V.Vae, "a VAE")
    ev.env.notes.append(f"{n.label}: decoded with anima's tiled VAE; the node's tile sizes are not used")
    return (V.Decoded(latent, vae, n.label, tiled=True),)


def set_latent_noise_mask(ev: Evaluator, n: Node) -> tuple:
    return (V.Masked(_latent(ev, n, "samples"), ev.typed(n, "mask", V.Mask, "a MASK from a file"), n.label),)


def latent_upscale(ev: Evaluator, n: Node) -> tuple:
    latent = _latent(ev, n, "samples")
    method = _method(ev, n, "upscale_method", LATENT_METHODS)
    width, height = ev.number(n, "width", int), ev.number(n, "height", int)
    crop = ev.text(n, "crop", "disabled")
    if width == 0 and height == 0:
        return (latent,)
    w0, h0 = (v // 8 for v in V.latent_size(latent))
    if width == 0:
        height = max(64, height)
        width = max(64, round(w0 * height / h0))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h0 * width / w0))
    else:
        width, height = max(64, width), max(64, height)
    return (V.Upscaled(latent, method, width // 8, height // 8, crop, n.label),)


def latent_upscale_by(ev: Evaluator, n: Node) -> tuple:
    latent = _latent(ev, n, "samples")
    method = _method(ev, n, "upscale_method", LATENT_METHODS)
    scale = ev.number(n, "scale_by")
    w0, h0 = (v // 8 for v in V.latent_size(latent))
    return (V.Upscaled(latent, method, round(w0 * scale), round(h0 * scale), "disabled", n.label),)


def _method(ev: Evaluator, n: Node, name: str, allowed: tuple[str, ...]) -> str:
    method = ev.text(n, name)
    if method not in allowed:
        raise AnimaError(f"{n.label}: unknown {name} {method!r}")
    return method


# ---------------------------------------------------------------------- images and masks
def load_image(ev: Evaluator, n: Node) -> tuple:
    name = ev.text(n, "image")
    return V.Picture(name, n.label, ev.env.image_size(name)), V.Mask(name, "alpha", n.label)


def load_image_mask(ev: Evaluator, n: Node) -> tuple:
    channel = ev.text(n, "channel", "alpha")
    if channel not in ("alpha", "red", "green", "blue"):
        raise AnimaError(f"{n.label}: unknown channel {channel!r}")
    return (V.Mask(ev.text(n, "image"), channel, n.label),)


def _picture(ev: Evaluator, n: Node, name: str) -> V.Picture:
    return ev.typed(n, name, V.Picture, "an IMAGE loaded from a file")


def _resized(p: V.Picture, method: str, width: int, height: int, crop: str = "disabled") -> V.Picture:
    if (width, height) == p.size and crop == "disabled" and method != "lanczos":
        return p  # interpolate to the same size is the identity (lanczos still rounds to 8 bits)
    op = Resize(method, width, height, crop)
    return _replace(p, size=(width, height), ops=(*p.ops, op))


def image_scale(ev: Evaluator, n: Node) -> tuple:
    p = _picture(ev, n, "image")
    method = _method(ev, n, "upscale_method", IMAGE_METHODS)
    width, height, crop = (
        ev.number(n, "width", int),
        ev.number(n, "height", int),
        ev.text(n, "crop", "disabled"),
    )
    if width == 0 and height == 0:
        return (p,)
    if width == 0:
        width = max(1, round(p.size[0] * height / p.size[1]))
    elif height == 0:
        height = max(1, round(p.size[1] * width / p.size[0]))
    return (_resized(p, method, width, height, crop),)


def image_scale_by(ev: Evaluator, n: Node) -> tuple:
    p = _picture(ev, n, "image")
    method, scale = _method(ev, n, "upscale_method", IMAGE_METHODS), ev.number(n, "scale_by")
    return (_resized(p, method, round(p.size[0] * scale), round(p.size[1] * scale)),)


def resize_image_mask(ev: Evaluator, n: Node) -> tuple:
    """ResizeImageMaskNode (comfy_extras/nodes_post_processing.py), on an image."""
    p = ev.get(n, "input")
    if not isinstance(p, V.Picture):
        raise AnimaError(
            f"{n.label}: anima resizes only images loaded from files here, got {type(p).__name__}"
        )
    mode = ev.text(n, "resize_type")
    method = _method(ev, n, "scale_method", IMAGE_METHODS)
    w, h = p.size

    def sub(name: str, kind: type = int):
        return ev.number(n, f"resize_type.{name}", kind)

    if mode == "scale dimensions":
        width, height, crop = sub("width"), sub("height"), ev.text(n, "resize_type.crop", "center")
        if width == 0 and height == 0:
            return (p,)
        if width == 0:
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return (_resized(p, method, width, height, crop),)
    if mode == "scale by multiplier":
        m = sub("multiplier", float)
        return (_resized(p, method, round(w * m), round(h * m)),)
    if mode in ("scale longer dimension", "scale shorter dimension"):
        size = sub("longer_size" if "longer" in mode else "shorter_size")
        longer = mode == "scale longer dimension"
        if (h > w) == longer and h != w:
            return (_resized(p, method, round((w / h) * size), size),)
        if w != h:
            return (_resized(p, method, size, round((h / w) * size)),)
        return (_resized(p, method, size, size),)
    if mode in ("scale width", "scale height"):
        if mode == "scale width":
            width = sub("width")
            return (p,) if width == 0 else (_resized(p, method, width, max(1, round(h * width / w))),)
        height = sub("height")
        return (p,) if height == 0 else (_resized(p, method, max(1, round(w * height / h)), height),)
    if mode == "scale total pixels":
        total = int(sub("megapixels", float) * 1024 * 1024)
        scale = math.sqrt(total / (w * h))
        return (_resized(p, method, round(w * scale), round(h * scale)),)
    if mode == "scale to multiple":
        return (_to_multiple(p, method, sub("multiple")),)
    raise AnimaError(f"{n.label}: resize type {mode!r} is not supported")


def _to_multiple(p: V.Picture, method: str, multiple: int) -> V.Picture:
    w, h = p.size
    if multiple <= 1:
        return p
    tw, th = w // multiple * multiple, h // multiple * multiple
    if tw == 0 or th == 0 or (tw, th) == (w, h):
        return p
    sw, sh = tw / w, th / h
    if sw >= sh:
        scaled = (tw, max(th, int(math.ceil(h * sw))))
    else:
        scaled = (max(tw, int(math.ceil(w * sh))), th)
    q = _resized(p, method, *scaled)
    x0, y0 = (scaled[0] - tw) // 2, (scaled[1] - th) // 2
    return _replace(q, size=(tw, th), ops=(*q.ops, Crop(x0, y0, tw, th)))


def pixel_filter(ev: Evaluator, n: Node) -> tuple:
    """A node that changes pixels (Canny, ImageInvert): the size passes, the pixels are not usable."""
    p = _picture(ev, n, "image")
    return (_replace(p, filters=(*p.filters, n.label)),)


def get_image_size(ev: Evaluator, n: Node) -> tuple:
    image = ev.get(n, "image")
    if isinstance(image, V.Picture):
        return image.size[0], image.size[1], 1
    if isinstance(image, V.Decoded):
        w, h = V.latent_size(image.latent)
        return w, h, V.latent_batch(image.latent)
    raise AnimaError(f"{n.label}: input 'image' must be an IMAGE")


def preview_image(ev: Evaluator, n: Node) -> tuple:
    return (ev.get(n, "images"),)


def save_image(ev: Evaluator, n: Node) -> tuple:
    return (ev.get(n, "images"),)


def mask_preview(ev: Evaluator, n: Node) -> tuple:
    return (ev.get(n, "mask"),)


# ---------------------------------------------------------------------- utilities
def primitive(ev: Evaluator, n: Node) -> tuple:
    return (ev.get(n, "value"),)


def switch(ev: Evaluator, n: Node) -> tuple:
    """ComfySwitchNode: only the chosen branch runs (lazy inputs)."""
    return (ev.get(n, "on_true" if ev.flag(n, "switch") else "on_false"),)


ASPECT_RATIOS = {
    "1:1 (Square)": (1, 1), "2:3 (Portrait Photo)": (2, 3), "3:2 (Photo)": (3, 2),
    "3:4 (Portrait Standard)": (3, 4), "4:3 (Standard)": (4, 3), "9:16 (Portrait Widescreen)": (9, 16),
    "16:9 (Widescreen)": (16, 9), "21:9 (Ultrawide)": (21, 9),
}  # fmt: skip


def resolution_selector(ev: Evaluator, n: Node) -> tuple:
    ratio = ev.text(n, "aspect_ratio")
    if ratio not in ASPECT_RATIOS:
        raise AnimaError(f"{n.label}: unknown aspect ratio {ratio!r}")
    wr, hr = ASPECT_RATIOS[ratio]
    megapixels, multiple = ev.number(n, "megapixels"), ev.number(n, "multiple", int)
    scale = math.sqrt(megapixels * 1024 * 1024 / (wr * hr))
    return round(wr * scale / multiple) * multiple, round(hr * scale / multiple) * multiple


RULES: dict[str, Rule] = {
    "UNETLoader": unet_loader,
    "CheckpointLoaderSimple": checkpoint_loader,
    "CLIPLoader": clip_loader,
    "VAELoader": vae_loader,
    "LoraLoaderModelOnly": lora_model_only,
    "LoraLoader": lora_loader,
    "ModelSamplingAuraFlow": model_sampling_aura_flow,
    "CFGZeroStar": cfg_zero_star,
    "RescaleCFG": _different_maths(
        "ComfyUI's RescaleCFG rescales with the eps/v-prediction formulas and a std over its first "
        "three latent axes; anima's rescale-cfg works on the flow velocity, so the images differ"
    ),
    "APG": _different_maths(
        "ComfyUI's APG adds the projected guidance as c + s * g (norms per channel); anima's APG is "
        "c + (s - 1) * g with per-image norms, so the images differ"
    ),
    "NAGuidance": _different_maths(
        "ComfyUI's NAGuidance guides the self-attention of the cond/uncond batch; anima's NAG guides "
        "the cross-attention with the negative prompt, so there is no counterpart"
    ),
    "CLIPTextEncode": clip_text_encode,
    "ConditioningZeroOut": conditioning_zero_out,
    "EmptyLatentImage": empty_latent,
    "EmptySD3LatentImage": empty_latent,
    "KSampler": ksampler,
    "KSamplerAdvanced": ksampler_advanced,
    "VAEEncode": vae_encode,
    "VAEDecode": vae_decode,
    "VAEDecodeTiled": vae_decode_tiled,
    "SetLatentNoiseMask": set_latent_noise_mask,
    "LatentUpscale": latent_upscale,
    "LatentUpscaleBy": latent_upscale_by,
    "LoadImage": load_image,
    "LoadImageMask": load_image_mask,
    "ImageScale": image_scale,
    "ImageScaleBy": image_scale_by,
    "ResizeImageMaskNode": resize_image_mask,
    "Canny": pixel_filter,
    "ImageInvert": pixel_filter,
    "GetImageSize": get_image_size,
    "PreviewImage": preview_image,
    "SaveImage": save_image,
    "MaskPreview": mask_preview,
    "PrimitiveInt": primitive,
    "PrimitiveFloat": primitive,
    "PrimitiveBoolean": primitive,
    "PrimitiveString": primitive,
    "PrimitiveStringMultiline": primitive,
    "ComfySwitchNode": switch,
    "ResolutionSelector": resolution_selector,
    "ModelPatchLoader": model_patch_loader,
    "AnimaLLLiteApply": lllite_apply,
    "Painter": _not_yet(
        "the Painter node's mask lives in ComfyUI's temp folder; save it as a mask image "
        "and load it with LoadImageMask"
    ),
    "LoadDA3Model": _not_yet(
        "anima has no Depth Anything 3 model; make the depth map in ComfyUI and load it"
    ),
    "DA3Inference": _not_yet(
        "anima has no Depth Anything 3 model; make the depth map in ComfyUI and load it"
    ),
    "DA3Render": _not_yet("anima has no Depth Anything 3 model; make the depth map in ComfyUI and load it"),
}
