"""What ComfyUI's image and mask nodes compute, as `values` descriptions (the fixtures' commit).

Pictures come from LoadImage files and keep the resizes applied since (``ImageScale``,
``ImageScaleBy``, ``ResizeImageMaskNode``), each turned into one concrete operation with the sizes
the node computes (``nodes.py`` / ``comfy_extras/nodes_post_processing.py``: Python ``round``,
``max(1, ...)``, the cover-then-crop of "scale to multiple"); anima's pipeline replays them
(`anima.workflows.comfy_image`). Pixel filters anima does not reproduce (Canny, ImageInvert) pass
the size on, for GetImageSize, and mark the pixels unusable.
"""

from __future__ import annotations

import math
from dataclasses import replace as _replace

from anima.errors import AnimaError
from anima.interop.comfyui import values as V
from anima.interop.comfyui.evaluate import Evaluator, choose
from anima.interop.comfyui.graph import Node
from anima.recipe.image_ops import IMAGE_METHODS, Crop, Resize


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
    method = choose(ev, n, "upscale_method", IMAGE_METHODS)
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
    method, scale = choose(ev, n, "upscale_method", IMAGE_METHODS), ev.number(n, "scale_by")
    return (_resized(p, method, round(p.size[0] * scale), round(p.size[1] * scale)),)


def resize_image_mask(ev: Evaluator, n: Node) -> tuple:
    """ResizeImageMaskNode (comfy_extras/nodes_post_processing.py), on an image."""
    p = ev.get(n, "input")
    if not isinstance(p, V.Picture):
        raise AnimaError(
            f"{n.label}: anima resizes only images loaded from files here, got {type(p).__name__}"
        )
    mode = ev.text(n, "resize_type")
    method = choose(ev, n, "scale_method", IMAGE_METHODS)
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
