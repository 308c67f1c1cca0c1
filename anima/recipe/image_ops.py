"""How an init image was prepared before ComfyUI's VAEEncode, as a short text a recipe can carry.

A ComfyUI graph often scales its input picture (``ImageScale``, ``ImageScaleBy``,
``ResizeImageMaskNode``) before ``VAEEncode``, which then centre-crops it to multiples of 8. The
graph reader turns every such node into concrete operations (the sizes are known once the picture
is), and the recipe records them, so a re-run prepares the same pixels (the pipeline side is
`anima.workflows.comfy_image`). Grammar, operations separated by ``;``:

    METHOD WxH [disabled|center]    ``comfy.utils.common_upscale`` to W x H (centre crop to the
                                    target aspect first with ``center``)
    crop X,Y WxH                    keep the W x H window whose top-left corner is (X, Y)
    none                            no operation (plain VAEEncode: only its crop to multiples of 8)

METHOD is one of ComfyUI's image methods: nearest-exact, bilinear, area, bicubic, lanczos.
No torch here: the recipe validates the text where it is made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from anima.errors import AnimaError

IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROPS = ("disabled", "center")
_RESIZE = re.compile(r"([a-z-]+) (\d+)x(\d+)(?: (disabled|center))?")
_CROP = re.compile(r"crop (\d+),(\d+) (\d+)x(\d+)")


@dataclass(frozen=True)
class Resize:
    method: str
    width: int
    height: int
    crop: str = "disabled"

    def text(self) -> str:
        return f"{self.method} {self.width}x{self.height}" + (" center" if self.crop == "center" else "")


@dataclass(frozen=True)
class Crop:
    x: int
    y: int
    width: int
    height: int

    def text(self) -> str:
        return f"crop {self.x},{self.y} {self.width}x{self.height}"


ImageOp = Resize | Crop


def parse_ops(text: str, what: str = "init image preparation") -> tuple[ImageOp, ...]:
    """The operations of a preparation text (``""`` and ``"none"`` have none)."""
    ops: list[ImageOp] = []
    for part in (p.strip() for p in text.split(";")):
        if part in ("", "none"):
            continue
        m = _CROP.fullmatch(part)
        if m:
            x, y, w, h = (int(g) for g in m.groups())
            if w < 1 or h < 1:
                raise AnimaError(f"{what}: empty crop {part!r}")
            ops.append(Crop(x, y, w, h))
            continue
        m = _RESIZE.fullmatch(part)
        if not m or m.group(1) not in IMAGE_METHODS:
            raise AnimaError(
                f"{what}: cannot read {part!r}; write 'METHOD WxH [center]' (METHOD one of "
                f"{', '.join(IMAGE_METHODS)}), 'crop X,Y WxH' or 'none'"
            )
        w, h = int(m.group(2)), int(m.group(3))
        if not (1 <= w <= 16384 and 1 <= h <= 16384):
            raise AnimaError(f"{what}: size {w}x{h} is outside 1..16384")
        ops.append(Resize(m.group(1), w, h, m.group(4) or "disabled"))
    return tuple(ops)


def format_ops(ops: tuple[ImageOp, ...]) -> str:
    """The text of some operations; ``"none"`` for none (so the text is never empty)."""
    return "; ".join(op.text() for op in ops) or "none"
