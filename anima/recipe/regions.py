"""Regional prompts as recipe data: `Region` units (a prompt and where it applies) and their text forms.

A region is a prompt plus a place: a rectangle in fractions of the image (``x0, y0, x1, y1``, origin top
left, so ``0,0,0.5,1`` is the left half) or a mask image (white = the region; an absolute path and a
digest, recorded as `Sources` records inputs). The shared settings (base-prompt weight, end step,
overlap policy) are the `Regional` group. How a run uses them: `anima.workflows.regions`.

Text forms, converted here once:

- ``--region "0,0,0.5,1: blonde girl, red dress"`` / ``--region "left.png: ..."`` (`Region.parse`);
- the two-character shortcut in the spirit of Forge Couple's basic mode (`couple`): a prompt of
  several lines, the first line the base prompt ("background: first line" in Forge Couple), each
  further line one equal tile, side by side (``columns``) or stacked (``rows``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from anima.errors import AnimaError
from anima.recipe import checks

MAX_REGIONS = 16
COUPLE_DIRECTIONS = ("columns", "rows")
_RECT = re.compile(r"^\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Region:
    """One regional prompt: `prompt`, and either `rect` (x0, y0, x1, y1 in [0, 1]) or `mask` (a path)."""

    prompt: str
    rect: tuple[float, ...] = ()
    mask: str = ""
    mask_hash: str = ""

    def __post_init__(self) -> None:
        checks.text("region prompt", self.prompt)
        for what in ("mask", "mask_hash"):
            label = f"region {what.replace('_', ' ')}"
            checks.one_line(label, checks.text(label, getattr(self, what)))
        try:
            rect = tuple(float(v) if checks.is_number(v) else v for v in self.rect)
        except TypeError:
            raise AnimaError(
                f"a region rectangle is four numbers, got {self.rect!r}", setting="regions"
            ) from None
        object.__setattr__(self, "rect", rect)
        if bool(rect) == bool(self.mask):
            raise AnimaError("a region needs either a rectangle or a mask (not both)", setting="regions")
        if rect:
            ok = len(rect) == 4 and all(checks.is_number(v) and 0.0 <= v <= 1.0 for v in rect)
            if not ok or not (rect[0] < rect[2] and rect[1] < rect[3]):
                raise AnimaError(
                    f"a region rectangle is x0,y0,x1,y1 in 0..1 with x0 < x1 and y0 < y1, got {self.rect!r}",
                    setting="regions",
                )

    @classmethod
    def parse(cls, text: str) -> Region:
        """``"x0,y0,x1,y1: prompt"`` or ``"MASK.png: prompt"`` (the place, a colon, the prompt)."""
        place, sep, prompt = text.partition(":")
        if _RECT.match(place) is None and re.match(r"^[A-Za-z]$", place.strip()) and sep:
            # a Windows drive letter ("C:\masks\a.png: ...") belongs to the path
            drive_rest, sep, prompt = prompt.partition(":")
            place = place + ":" + drive_rest
        if not sep or not place.strip():
            raise AnimaError(
                f"region {text!r}: write PLACE: PROMPT, the place a rectangle x0,y0,x1,y1 in 0..1 "
                "or a mask image",
                setting="regions",
            )
        m = _RECT.match(place)
        if m is None and re.fullmatch(r"[\d.,\s+-]+", place):
            raise AnimaError(
                f"region {text!r}: a rectangle is four numbers x0,y0,x1,y1 in 0..1", setting="regions"
            )
        if m is not None:
            try:
                rect = tuple(float(v) for v in m.groups())
            except ValueError:
                raise AnimaError(
                    f"region {text!r}: the rectangle is not four numbers", setting="regions"
                ) from None
            return cls(prompt.strip(), rect=rect)
        return cls(prompt.strip(), mask=place.strip())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": self.prompt}
        if self.rect:
            out["rect"] = list(self.rect)
        if self.mask:
            out["mask"] = self.mask
        if self.mask_hash:
            out["mask_hash"] = self.mask_hash
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Region:
        if not isinstance(data, dict) or not set(data) <= {"prompt", "rect", "mask", "mask_hash"}:
            raise AnimaError(f"a region is {{prompt, rect | mask}}, got {data!r:.80}", setting="regions")
        if "prompt" not in data:
            raise AnimaError("a region needs a prompt", setting="regions")
        rect = data.get("rect", ())
        if not isinstance(rect, list | tuple):
            raise AnimaError(f"a region rectangle is four numbers, got {rect!r}", setting="regions")
        mask, digest = data.get("mask", ""), data.get("mask_hash", "")
        return cls(data["prompt"], rect=tuple(rect), mask=mask, mask_hash=digest)


def couple(text: str, direction: str) -> tuple[str, tuple[Region, ...]]:
    """A Forge-Couple-style prompt: its first line is the base prompt, each further non-empty line a
    region, the image split into equal ``columns`` (left to right) or ``rows`` (top to bottom)."""
    checks.choice("couple direction", direction, COUPLE_DIRECTIONS, setting="couple")
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    base, tiles = lines[0], [line for line in lines[1:] if line]
    if not tiles:
        raise AnimaError(
            "a couple prompt has the base prompt on its first line and one line per region after it",
            setting="couple",
        )
    n = len(tiles)
    regions = []
    for i, prompt in enumerate(tiles):
        a, b = i / n, (i + 1) / n
        regions.append(Region(prompt, rect=(a, 0.0, b, 1.0) if direction == "columns" else (0.0, a, 1.0, b)))
    return base, tuple(regions)


def check_regions(regions: tuple, overlap: str) -> None:
    """Types, count, and (policy ``error``) no two rectangles overlapping. Masks are checked when
    they are loaded, against the image size (`anima.workflows.regions`)."""
    if any(not isinstance(r, Region) for r in regions):
        raise AnimaError("a recipe's regions are Region values", setting="regions")
    if len(regions) > MAX_REGIONS:
        raise AnimaError(f"at most {MAX_REGIONS} regions, got {len(regions)}", setting="regions")
    if overlap != "error":
        return
    rects = [(i, r.rect) for i, r in enumerate(regions, start=1) if r.rect]
    for k, (i, a) in enumerate(rects):
        for j, b in rects[k + 1 :]:
            if min(a[2], b[2]) - max(a[0], b[0]) > 1e-9 and min(a[3], b[3]) - max(a[1], b[1]) > 1e-9:
                raise AnimaError(
                    f"regions {i} and {j} overlap; move them apart or set the overlap policy to blend",
                    setting="regions_overlap",
                )
