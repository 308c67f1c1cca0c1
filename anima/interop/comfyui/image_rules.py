"""What ComfyUI's image and mask nodes compute, as `values` descriptions (the fixtures' commit).

Pictures come from LoadImage files and keep the resizes applied since (``ImageScale``,
``ImageScaleBy``, ``ResizeImageMaskNode``), each turned into one concrete operation with the sizes
the node computes (``nodes.py`` / ``comfy_extras/nodes_post_processing.py``: Python ``round``,
``max(1, ...)``, the cover-then-crop of "scale to multiple"); anima's pipeline replays them
(`anima.workflows.comfy_image`). The pixel filters ``Canny`` (comfy_extras/nodes_canny.py),
``ImageInvert`` (nodes.py) and ``Painter`` (comfy_extras/nodes_painter.py) are recorded the same
way, as steps on the picture (`values.Filter`) with the settings read from their widgets; the
runner computes such a derived picture when a control unit takes it
(`anima.jobs.comfy_pictures`).
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


def _filtered(p: V.Picture, step: V.Filter) -> V.Picture:
    return _replace(p, ops=(*p.ops, step))


def canny(ev: Evaluator, n: Node) -> tuple:
    """Canny: the thresholds in the node's declared range 0.01..0.99 (ComfyUI's validation refuses
    others) and low <= high (kornia's canny raises otherwise)."""
    p = _picture(ev, n, "image")
    low, high = ev.number(n, "low_threshold"), ev.number(n, "high_threshold")
    for name, value in (("low_threshold", low), ("high_threshold", high)):
        if not 0.01 <= value <= 0.99:
            raise AnimaError(f"{n.label}: {name} {value:g} is outside 0.01..0.99")
    if low > high:
        raise AnimaError(f"{n.label}: low_threshold {low:g} is above high_threshold {high:g}")
    return (_filtered(p, V.Canny(low, high, n.label)),)


def image_invert(ev: Evaluator, n: Node) -> tuple:
    return (_filtered(_picture(ev, n, "image"), V.Invert(n.label)),)


def hex_rgb(n: Node, text: str) -> tuple[float, float, float]:
    """Painter's bg_color: '#rrggbb' -> floats; any other length is black (nodes_painter.hex_to_rgb)."""
    digits = text.lstrip("#")
    if len(digits) != 6:
        return (0.0, 0.0, 0.0)
    try:
        r, g, b = (int(digits[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
    except ValueError:
        raise AnimaError(f"{n.label}: bg_color {text!r} is not a #rrggbb colour") from None
    return (r, g, b)


def painter(ev: Evaluator, n: Node) -> tuple:
    """Painter: (the painter file over the base image, the file's alpha). Without a base image the
    canvas is width x height of bg_color; without a drawing (an empty `mask` widget) the image
    passes and the mask is zeros. The file is an input like LoadImage's ('... [temp]' in a
    ComfyUI graph: the planner looks for it in the input folders)."""
    base = ev.get(n, "image", None)
    if base is not None and not isinstance(base, V.Picture):
        raise AnimaError(f"{n.label}: input 'image' must be an IMAGE loaded from a file")
    if base is None:
        width, height = ev.number(n, "width", int, 512), ev.number(n, "height", int, 512)
        if width < 1 or height < 1:
            raise AnimaError(f"{n.label}: canvas size {width}x{height} must be positive")
        rgb = hex_rgb(n, ev.text(n, "bg_color", "#000000"))
        base = V.Picture("", n.label, (width, height), fill=V.Fill(width, height, rgb))
    name = ev.text(n, "mask", "")
    name = name if name.strip() else ""
    image = _filtered(base, V.Paint(name, n.label)) if name else base
    return image, V.PainterMask(base, name, n.label)


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
