"""Control pictures and masks that a ComfyUI graph computes from its files, computed as ComfyUI does.

A graph's control image often is not a file as it is: the any-control template runs its LoadImage
through ``Canny`` and ``ImageInvert`` and then ``ResizeImageMaskNode``, the inpainting template
paints a mask over its picture with ``Painter``. The planner records such a picture as steps
(`anima.interop.comfyui.values.Picture`); this module computes them, with ComfyUI's maths at the
fixtures' commit (our own code, written from reading those nodes):

- resizes and crops: `anima.workflows.comfy_image.apply_ops` (``comfy.utils.common_upscale``);
- ``Canny`` (comfy_extras/nodes_canny.py): ``kornia.filters.canny`` on the RGB picture as
  [B, 3, H, W] float32 (kornia turns it to grey itself), kornia's defaults (5x5 Gaussian, sigma 1,
  hysteresis), the edges (output 1) repeated to 3 channels;
- ``ImageInvert`` (nodes.py): ``1 - x``;
- ``Painter`` (comfy_extras/nodes_painter.py): the painter file opened with PIL and converted to
  RGBA (no EXIF rotation, unlike LoadImage), LANCZOS-resized by PIL to the picture when the sizes
  differ, bytes / 255 in float32; image = ``rgb * a + base * (1 - a)``, mask = ``a``; a canvas
  without a base image is its bg_color.

Storage: a control unit records its image by path and digest, so a derived picture is written as a
file, an 8-bit PNG, and read back as bytes / 255 like any control image. That is exact whenever the
picture lies on the 8-bit grid, which covers the templates: Canny edges are 0 or 1 (hysteresis
leaves no weak edges), ImageInvert of such a picture, lanczos resizes (ComfyUI's own go through 8
bits), a Painter composite where the painter alpha is 0 or 255, and every Painter mask. Elsewhere
(a bilinear resize, a half-transparent brush edge) the bytes are the nearest level, within 0.5/255
of ComfyUI's float. A 16-bit PNG would keep more but PIL writes no 16-bit RGB, and a float file
would not be a picture anyone can look at (A1111 keeps its "detected maps" as 8-bit PNGs too).
A mask is written as RGBA with R = G = B = v and A = 255 - v, so that it reads as v through every
channel a recipe may name (LoadImageMask's red/green/blue and luminance exactly, LoadImage's
``1 - alpha`` up to float32 rounding, below 1e-6).
kornia is optional (``pip install 'anima[control]'``) and imported only for Canny.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from anima.errors import AnimaError
from anima.interop.comfyui import values as V
from anima.recipe.image_ops import Crop, Resize
from anima.workflows.comfy_image import apply_ops
from anima.workflows.init_image import load_rgb


def _kornia_canny():
    try:
        from kornia.filters import canny
    except ImportError:
        raise AnimaError("the graph's Canny node needs kornia: pip install 'anima[control]'") from None
    return canny


def needs_kornia(p: V.Picture) -> bool:
    return any(isinstance(op, V.Canny) for op in p.ops)


def check_available(p: V.Picture) -> None:
    """The optional packages `p`'s steps need are installed (one line otherwise)."""
    if needs_kornia(p):
        _kornia_canny()


def _painter_rgba(path: str, width: int, height: int, node: str) -> np.ndarray:
    """[H, W, 4] float32: the painter file as Painter reads it, at the picture's size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgba = im.convert("RGBA")
    except FileNotFoundError:
        raise AnimaError(f"{node}: painter file {path} not found; pass --input-dir") from None
    except (UnidentifiedImageError, OSError):
        raise AnimaError(f"{node}: painter file {path} is not a readable image") from None
    if rgba.size != (width, height):
        rgba = rgba.resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(rgba).astype(np.float32) / np.float32(255.0)


def _fill(f: V.Fill) -> torch.Tensor:
    base = torch.zeros((1, f.height, f.width, 3), dtype=torch.float32)
    for c in range(3):
        base[0, :, :, c] = f.rgb[c]  # the float64 colour rounded to float32, as the node's assignment
    return base


def picture(p: V.Picture) -> torch.Tensor:
    """The pixels of a derived picture: [1, H, W, 3] float32 (`p.name` a path, or `p.fill`)."""
    x = _fill(p.fill) if p.fill is not None else load_rgb(p.name)
    for op in p.ops:
        if isinstance(op, Resize | Crop):
            x = apply_ops(x, (op,))
        elif isinstance(op, V.Canny):
            canny = _kornia_canny()
            _, edges = canny(x.float().movedim(-1, 1), op.low, op.high)
            x = edges.float().repeat(1, 3, 1, 1).movedim(1, -1)
        elif isinstance(op, V.Invert):
            x = 1.0 - x
        elif isinstance(op, V.Paint):
            h, w = x.shape[1:3]
            rgba = _painter_rgba(op.file, w, h, op.node)
            rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:4]
            base = x[0].cpu().numpy().astype(np.float32)
            x = torch.from_numpy(rgb * alpha + base * (np.float32(1.0) - alpha))[None]
        else:  # pragma: no cover - the planner makes only the steps above
            raise AnimaError(f"unknown picture step {op!r}")
    return x.contiguous()


def painter_mask(m: V.PainterMask) -> torch.Tensor:
    """Painter's MASK: [1, H, W] float32, the painter file's alpha at the base picture's size."""
    w, h = m.base.size
    if not m.file:
        return torch.zeros((1, h, w), dtype=torch.float32)
    return torch.from_numpy(_painter_rgba(m.file, w, h, m.node)[:, :, 3].copy())[None]


def _bytes(x: torch.Tensor) -> np.ndarray:
    """Floats -> the nearest 8-bit levels (a level k/255 read back is k exactly)."""
    return np.clip(np.rint(x.detach().float().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)


def image_png(x: torch.Tensor) -> bytes:
    """A [1, H, W, 3] picture as an 8-bit RGB PNG file's bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_bytes(x[0])).save(buf, format="PNG")
    return buf.getvalue()


def mask_png(m: torch.Tensor) -> bytes:
    """A [1, H, W] mask as an RGBA PNG that reads as the mask through every channel (see above)."""
    from PIL import Image

    v = _bytes(m[0])
    rgba = np.stack([v, v, v, 255 - v], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    return buf.getvalue()


def derived_png(value: V.Picture | V.PainterMask) -> bytes:
    """The PNG bytes of one derived control image or mask."""
    if isinstance(value, V.PainterMask):
        return mask_png(painter_mask(value))
    return image_png(picture(value))
