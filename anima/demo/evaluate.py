"""Pixel-based prompt-adherence evaluator for the DEMO shapes model, and its command.

`detect` reads an image back into a scene description without any model:

1. every pixel is classified as its nearest palette colour (`anima.demo.dataset.COLOURS`);
2. the background is the most common class on the image border;
3. the shape colour is the most common non-background class, and the shape is its largest
   4-connected region (stray specks are ignored);
4. the position is the named place nearest to the region's centroid;
5. the kind: a star if the outline has five points (see `star_points`), otherwise the ideal convex
   shape (circle, square, triangle), stretched to the region's bounding box, that overlaps the
   region best (highest IoU).

``python -m anima.demo.evaluate`` generates one image per held-out prompt (combinations the demo
model never saw in training) and prints the share where colour, background, shape and position are
all right; ``--new-shape`` instead prompts for the held-back "star" (the LoRA test).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anima.demo.dataset import COLOURS, NEW_SHAPE, POSITIONS, SHAPES
from anima.errors import AnimaError

EVAL_SIZE = 64
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)
_MIN_SHAPE_FRACTION = 0.01


@dataclass(frozen=True)
class Detection:
    """What the evaluator sees; None where it could not tell (e.g. no shape at all)."""

    colour: str | None
    shape: str | None
    background: str | None
    position: str | None
    fill: float = 0.0
    solidity: float = 0.0

    def matches(self, combo: tuple[str, str, str, str]) -> bool:
        return (self.colour, self.shape, self.background, self.position) == tuple(combo)


def _as_array(image) -> np.ndarray:
    """PIL image or uint8 / float array [H, W, 3] -> uint8 [EVAL_SIZE, EVAL_SIZE, 3]."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        a = np.asarray(image)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
        image = Image.fromarray(a)
    image = image.convert("RGB")
    if image.size != (EVAL_SIZE, EVAL_SIZE):
        image = image.resize((EVAL_SIZE, EVAL_SIZE), Image.Resampling.BOX)
    return np.asarray(image)


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (plain BFS: 64x64 is tiny)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        region = []
        queue = deque([(int(y0), int(x0))])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(region) > len(best):
            best = region
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of 2-D points (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def _template(kind: str, h: int, w: int, supersample: int = 4) -> np.ndarray:
    """Boolean mask of the ideal `kind` drawn to fill an h x w box (as `dataset.render` draws it)."""
    from PIL import Image, ImageDraw

    W, H = w * supersample, h * supersample
    img = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(img)
    if kind == "circle":
        draw.ellipse([0, 0, W, H], fill=255)
    elif kind == "square":
        draw.rectangle([0, 0, W, H], fill=255)
    elif kind == "triangle":
        draw.polygon([(W / 2, 0), (W, H), (0, H)], fill=255)
    else:
        raise ValueError(f"no template for {kind!r}")
    small = img.resize((w, h), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def radial_harmonics(region: np.ndarray, bins: int = 72) -> np.ndarray:
    """Amplitudes of the outline's radial profile: element k is the k-fold harmonic.

    The profile is the farthest boundary pixel from the centroid in each of `bins` directions,
    divided by its mean. Measured on the renders: an ideal triangle has a 3-fold amplitude of 0.27,
    a square a 4-fold one of 0.14, a star a 5-fold one of 0.27, a circle none above 0.02; a regular
    pentagon's 5-fold amplitude is about 0.07 (its corners are not points).
    """
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    pad = np.pad(region, 1)
    inner = pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    by, bx = np.nonzero(region & ~inner)
    angle = np.arctan2(by - cy, bx - cx)
    radius = np.hypot(by - cy, bx - cx) + 0.5  # to the pixel's outer edge, roughly
    which = ((angle + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    profile = np.full(bins, np.nan)
    for b in np.unique(which):
        profile[b] = radius[which == b].max()
    idx = np.arange(bins)
    known = ~np.isnan(profile)
    profile = np.interp(idx, idx[known], profile[known], period=bins)
    return np.abs(np.fft.rfft(profile / profile.mean())) / bins * 2


# A star's five points give it a 5-fold harmonic that dominates the 3- and 4-fold ones and reaches
# at least 40% of the ideal star's 0.27 (a pentagon, about 0.07, or a soft circle stay below).
STAR_HARMONIC = 0.4 * 0.27


def star_points(harmonics: np.ndarray) -> bool:
    """Whether an outline with these `radial_harmonics` is a five-pointed star."""
    a3, a4, a5 = harmonics[3], harmonics[4], harmonics[5]
    return bool(a5 >= STAR_HARMONIC and a5 > a3 and a5 > a4)


def shape_kind(region: np.ndarray) -> tuple[str, float, float]:
    """(kind, fill, solidity) of a boolean region mask.

    A star is recognised by its points (`star_points`): matching it against a crisp star template
    fails on the slightly rounded stars a 64x64 model draws, which a person still calls stars. The
    convex shapes are the ideal shape, stretched to the region's bounding box, with the highest
    overlap (IoU): this reads a slightly rounded square as a square and a soft triangle as a
    triangle, as a person would. `fill` (area / box) and `solidity` (area / convex hull) are reported
    for diagnosis.
    """
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = region[y0:y1, x0:x1]
    area = float(crop.sum())
    # Hull of the pixel corners, so a filled axis-aligned square has solidity exactly 1.
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    solidity = area / max(_hull_area(corners), 1.0)
    fill = area / crop.size
    if star_points(radial_harmonics(region)):
        return NEW_SHAPE, fill, solidity

    def iou(kind: str) -> float:
        t = _template(kind, *crop.shape)
        return float((t & crop).sum()) / max(float((t | crop).sum()), 1.0)

    kind = max(SHAPES, key=iou)
    return kind, fill, solidity


def detect(image) -> Detection:
    """Read colour, background, shape kind and position back from an image."""
    a = _as_array(image).astype(np.float32)
    dist = ((a[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    border = np.concatenate(
        [labels[:2].ravel(), labels[-2:].ravel(), labels[:, :2].ravel(), labels[:, -2:].ravel()]
    )
    bg = Counter(border.tolist()).most_common(1)[0][0]
    other = labels[labels != bg]
    if other.size < _MIN_SHAPE_FRACTION * labels.size:
        return Detection(None, None, _NAMES[bg], None)
    fg = Counter(other.tolist()).most_common(1)[0][0]
    region = _largest_region(labels == fg)
    kind, fill, solidity = shape_kind(region)
    ys, xs = np.nonzero(region)
    cx, cy = (xs.mean() + 0.5) / labels.shape[1], (ys.mean() + 0.5) / labels.shape[0]
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    return Detection(_NAMES[fg], kind, _NAMES[bg], position, fill, solidity)


@dataclass(frozen=True)
class Score:
    total: int
    all_right: int
    colour: int
    shape: int
    background: int
    position: int

    @property
    def accuracy(self) -> float:
        return self.all_right / max(self.total, 1)

    def summary(self) -> str:
        n = max(self.total, 1)
        return (
            f"all right {self.all_right}/{self.total} = {100 * self.accuracy:.1f}%  "
            f"(colour {100 * self.colour / n:.0f}%, shape {100 * self.shape / n:.0f}%, "
            f"background {100 * self.background / n:.0f}%, position {100 * self.position / n:.0f}%)"
        )


def score(detections: Sequence[Detection], combos: Sequence[tuple[str, str, str, str]]) -> Score:
    rows = list(zip(detections, combos, strict=True))
    return Score(
        total=len(rows),
        all_right=sum(d.matches(c) for d, c in rows),
        colour=sum(d.colour == c[0] for d, c in rows),
        shape=sum(d.shape == c[1] for d, c in rows),
        background=sum(d.background == c[2] for d, c in rows),
        position=sum(d.position == c[3] for d, c in rows),
    )


# ------------------------------------------------------------------------------------------ command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m anima.demo.evaluate",
        description="Score the bundled DEMO model (or a retrained one) on held-out shape prompts.",
    )
    p.add_argument("--model-dir", help="demo model folder (default: the one bundled in the package)")
    p.add_argument("--lora", action="append", default=[], help="LoRA file[:strength] to apply (repeatable)")
    p.add_argument("--new-shape", action="store_true", help=f"prompt for the held-back '{NEW_SHAPE}' instead")
    p.add_argument("--count", type=int, default=50, help="number of prompts (default 50)")
    p.add_argument(
        "--split",
        choices=("held-out", "train"),
        default="held-out",
        help="held-out combinations (the score) or training ones (to tune settings on)",
    )
    p.add_argument("--steps", type=int, help="sampling steps (default: the demo's)")
    p.add_argument("--cfg", type=float, help="CFG scale (default: the demo's)")
    p.add_argument("--sampler", help="sampler (default: the demo's)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the first prompt (then +1 each)")
    p.add_argument("--save", help="folder to write the images and a CSV of detections into")
    p.add_argument("-v", "--verbose", action="store_true", help="print every prompt and detection")
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m anima.demo.evaluate``: a command line edge, so it may import the runner (which
    imports this module's evaluator) when it runs."""
    from anima.demo.runner import evaluate_model

    args = _parser().parse_args(argv)
    try:
        result = evaluate_model(
            model_dir=args.model_dir,
            loras=args.lora,
            new_shape=args.new_shape,
            count=args.count,
            steps=args.steps,
            cfg=args.cfg,
            sampler=args.sampler,
            seed=args.seed,
            save_dir=args.save,
            report=print if args.verbose else None,
            split=args.split,
        )
    except AnimaError as e:
        print(f"anima: error: {e}", file=sys.stderr)
        return 2
    what = f"'{NEW_SHAPE}' prompts (shape found)" if args.new_shape else f"{args.split} prompts"
    print(f"DEMO model, {result.total} {what}: {result.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
