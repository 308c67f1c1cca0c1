"""What each supported ComfyUI node computes, as `values` descriptions (the fixtures' commit).

One rule per node type: ``rule(evaluator, node) -> outputs``. The semantics are ComfyUI's (its
``nodes.py`` and ``comfy_extras``), recorded in the comfy-workflows fixture README where the
fixtures exercise them; sizes are computed here exactly as the nodes compute them, because they
decide the image. Nodes whose maths anima does not share say so in their one-line error instead of
running something else. The image and mask nodes are in `anima.interop.comfyui.image_rules`; `RULES`
is the table of all of them.
"""

from __future__ import annotations

import math
from dataclasses import replace as _replace

from anima.errors import AnimaError
from anima.interop.comfyui import image_rules
from anima.interop.comfyui import values as V
from anima.interop.comfyui.evaluate import Evaluator, Rule, choose
from anima.interop.comfyui.graph import Node

LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
_NO_DEPTH = (
    "anima has no depth estimator (Depth Anything 3); give a depth map file instead "
    "(LoadImage it into AnimaLLLiteApply's image)"
)


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


def _unsupported(why: str) -> Rule:
    def rule(ev: Evaluator, n: Node) -> tuple:
        raise AnimaError(f"{n.label} is not supported: {why}")

    return rule


def model_patch_loader(ev: Evaluator, n: Node) -> tuple:
    return (V.Patch(ev.text(n, "name"), n.label),)


def lllite_apply(ev: Evaluator, n: Node) -> tuple:
    """AnimaLLLiteApply: a control unit on the model, its window read with this model's shift."""
    model = ev.typed(n, "model", V.Model, "a MODEL")
    patch = ev.typed(n, "model_patch", V.Patch, "a MODEL_PATCH")
    picture = ev.typed(n, "image", V.Picture, "an IMAGE loaded from a file")
    mask = ev.get(n, "mask", None)
    if mask is not None and not isinstance(mask, V.Mask | V.PainterMask):
        raise AnimaError(f"{n.label}: input 'mask' must be a MASK from a file or a Painter")
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
    if picture.filters or picture.fill is not None:
        done = ", ".join(dict.fromkeys(f.node for f in picture.filters)) or picture.node
        raise AnimaError(
            f"{n.label}: its image passed through {done}; anima computes such pictures only for "
            "control images (AnimaLLLiteApply), VAEEncode takes a file with resizes"
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
    method = choose(ev, n, "upscale_method", LATENT_METHODS)
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
    method = choose(ev, n, "upscale_method", LATENT_METHODS)
    scale = ev.number(n, "scale_by")
    w0, h0 = (v // 8 for v in V.latent_size(latent))
    return (V.Upscaled(latent, method, round(w0 * scale), round(h0 * scale), "disabled", n.label),)


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
    "RescaleCFG": _unsupported(
        "ComfyUI's RescaleCFG rescales with the eps/v-prediction formulas and a std over its first "
        "three latent axes; anima's rescale-cfg works on the flow velocity, so the images differ"
    ),
    "APG": _unsupported(
        "ComfyUI's APG adds the projected guidance as c + s * g (norms per channel); anima's APG is "
        "c + (s - 1) * g with per-image norms, so the images differ"
    ),
    "NAGuidance": _unsupported(
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
    "LoadImage": image_rules.load_image,
    "LoadImageMask": image_rules.load_image_mask,
    "ImageScale": image_rules.image_scale,
    "ImageScaleBy": image_rules.image_scale_by,
    "ResizeImageMaskNode": image_rules.resize_image_mask,
    "Canny": image_rules.canny,
    "ImageInvert": image_rules.image_invert,
    "Painter": image_rules.painter,
    "GetImageSize": image_rules.get_image_size,
    "PreviewImage": image_rules.preview_image,
    "SaveImage": image_rules.save_image,
    "MaskPreview": image_rules.mask_preview,
    "PrimitiveInt": primitive,
    "PrimitiveFloat": primitive,
    "PrimitiveBoolean": primitive,
    "PrimitiveString": primitive,
    "PrimitiveStringMultiline": primitive,
    "ComfySwitchNode": switch,
    "ResolutionSelector": resolution_selector,
    "ModelPatchLoader": model_patch_loader,
    "AnimaLLLiteApply": lllite_apply,
    "LoadDA3Model": _unsupported(_NO_DEPTH),
    "DA3Inference": _unsupported(_NO_DEPTH),
    "DA3Render": _unsupported(_NO_DEPTH),
}
