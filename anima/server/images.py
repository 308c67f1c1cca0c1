"""Uploaded images in, previews and results out: base64 decoding with limits, A1111 resize modes,
inpaint masks.

Every decode goes through `decode_image`, which refuses what is too big (bytes, then pixels, read
from the header before any pixel is decoded) and turns anything PIL cannot read into a 400.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from anima.errors import AnimaError
from anima.server.security import Limits

_DATA_URL = re.compile(r"^data:[\w/+.\-]+(;[\w=\-]+)*;base64,", re.IGNORECASE)


def b64_bytes(text: str, what: str, limits: Limits) -> bytes:
    """base64 (optionally a ``data:...;base64,`` URL) -> bytes, size-checked before decoding."""
    body = _DATA_URL.sub("", text.strip(), count=1)
    if len(body) * 3 // 4 > limits.max_upload_bytes:
        raise AnimaError(f"{what} is over this server's limit of {limits.max_upload_bytes} bytes")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise AnimaError(f"{what} is not valid base64") from None


def decode_image(text: str, what: str, limits: Limits) -> Image.Image:
    """A fully loaded PIL image from base64, EXIF rotation applied; `AnimaError` when unreadable."""
    data = b64_bytes(text, what, limits)
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size  # header only: refuse bombs before decoding pixels
        if w * h > limits.max_upload_pixels:
            raise AnimaError(
                f"{what} is {w}x{h}, over this server's limit of {limits.max_upload_pixels} pixels"
            )
        im.load()
        return ImageOps.exif_transpose(im)
    except AnimaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise AnimaError(f"{what} could not be decoded as an image ({type(exc).__name__})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with transparent pixels put on white (as A1111 does for RGBA uploads)."""
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def resize_for(im: Image.Image, width: int, height: int, mode: int = 0) -> Image.Image:
    """A1111 resize modes: 0 (and 3) stretch, 1 crop to fill then resize, 2 resize to fit and pad."""
    if im.size == (width, height):
        return im
    if mode == 1:
        return ImageOps.fit(im, (width, height), Image.Resampling.LANCZOS)
    if mode == 2:
        fitted = ImageOps.contain(im, (width, height), Image.Resampling.LANCZOS)
        # Pad by stretching the edge pixels outward, like A1111's "resize and fill".
        out = im.resize((width, height), Image.Resampling.LANCZOS).filter(ImageFilter.GaussianBlur(16))
        out.paste(fitted, ((width - fitted.width) // 2, (height - fitted.height) // 2))
        return out
    return im.resize((width, height), Image.Resampling.LANCZOS)


def prepare_mask(im: Image.Image, width: int, height: int, *, invert: bool) -> Image.Image:
    """Mask upload -> 'L' image at the output size, white = repaint (the pipeline blurs it).

    An RGBA mask whose colour channels are empty (a canvas painted with alpha) uses its alpha.
    """
    if im.mode in ("RGBA", "LA"):
        alpha = im.getchannel("A")
        colour = im.convert("L")
        mask = (
            alpha if colour.getextrema()[1] == 0 else Image.composite(colour, Image.new("L", im.size), alpha)
        )
    else:
        mask = im.convert("L")
    mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    return ImageOps.invert(mask) if invert else mask


def png_bytes(arr_or_image, **save_kw) -> bytes:
    im = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image)
    buf = io.BytesIO()
    im.save(buf, format="PNG", **save_kw)
    return buf.getvalue()


def b64_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def text_chunks(text: str, what: str, limits: Limits) -> dict[str, str]:
    """The text metadata of a base64 image (PNG tEXt/iTXt/zTXt, or PIL's string info fields)."""
    data = b64_bytes(text, what, limits)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.max_upload_pixels:
                raise AnimaError(
                    f"{what} is {w}x{h}, over this server's limit of {limits.max_upload_pixels} pixels"
                )
            chunks = getattr(im, "text", None)  # PNG: also reads chunks after the pixel data
            if chunks is None:
                chunks = {k: v for k, v in im.info.items() if isinstance(v, str)}
            return dict(chunks)
    except AnimaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise AnimaError(f"{what} could not be decoded as an image ({type(exc).__name__})") from None
