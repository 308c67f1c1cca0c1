"""The procedurally generated "shapes" dataset the bundled DEMO model is trained on.

One coloured shape (circle, square, triangle; "star" is held back so that a LoRA can teach it) in one
of five named places on a plain coloured background, drawn anti-aliased at any size. Every scene has
captions in two styles, Danbooru-like tags and English sentences:

    red circle, blue background, top left
    a red circle in the top left on a blue background

Scenes, captions and the train / held-out split are pure functions of a seed, so the dataset is
regenerated bit for bit by `write_dataset` (the demo build never ships images, only this code).
Positions and sizes jitter a little so the model learns a distribution rather than 450 bitmaps.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from anima.errors import AnimaError

# Saturated, well separated colours: the evaluator classifies pixels by nearest palette entry.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 170, 45),
    "blue": (35, 65, 225),
    "yellow": (245, 215, 35),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
NEW_SHAPE = "star"  # never in the base training set; the LoRA test teaches it
ALL_SHAPES: tuple[str, ...] = (*SHAPES, NEW_SHAPE)
# Centre of each named place as a fraction of the image size (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
}
SHAPE_SIZE = 0.36  # nominal extent of a shape as a fraction of the image side
SPLIT_SEED = 5
NUM_HELD_OUT = 50


@dataclass(frozen=True)
class Scene:
    """One image: what is drawn and where. `dx`, `dy`, `scale` are the small random jitters."""

    colour: str
    shape: str
    background: str
    position: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    rotation: float = 0.0

    def __post_init__(self) -> None:
        for what, value, allowed in (
            ("colour", self.colour, COLOURS),
            ("background", self.background, COLOURS),
            ("shape", self.shape, ALL_SHAPES),
            ("position", self.position, POSITIONS),
        ):
            if value not in allowed:
                raise AnimaError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")
        if self.colour == self.background:
            raise AnimaError(f"a {self.colour} shape on a {self.background} background would be invisible")

    @property
    def combo(self) -> tuple[str, str, str, str]:
        return (self.colour, self.shape, self.background, self.position)


def all_combos(shapes: Sequence[str] = SHAPES) -> list[tuple[str, str, str, str]]:
    """Every (colour, shape, background, position) with colour != background, in a fixed order."""
    return [(c, s, b, p) for c, s, b, p in itertools.product(COLOURS, shapes, COLOURS, POSITIONS) if c != b]


def split_combos(
    shapes: Sequence[str] = SHAPES, held_out: int = NUM_HELD_OUT, seed: int = SPLIT_SEED
) -> tuple[list[tuple[str, str, str, str]], list[tuple[str, str, str, str]]]:
    """(train, held_out) combos: `held_out` combos the model never sees, chosen by a seeded shuffle."""
    combos = all_combos(shapes)
    order = list(range(len(combos)))
    random.Random(seed).shuffle(order)
    held = sorted(order[:held_out])
    held_set = set(held)
    return [c for i, c in enumerate(combos) if i not in held_set], [combos[i] for i in held]


# ------------------------------------------------------------------------------------------ captions
def tag_caption(scene: Scene, rng: random.Random | None = None, *, drop_position: bool = False) -> str:
    """``red circle, blue background, top left`` (tag order shuffled when `rng` is given)."""
    tags = [f"{scene.colour} {scene.shape}", f"{scene.background} background"]
    if not drop_position:
        tags.append(scene.position)
    if rng is not None:
        rng.shuffle(tags)
    return ", ".join(tags)


_SENTENCES = (
    "a {c} {s} in the {p} on a {b} background",
    "a {c} {s} on a {b} background in the {p}",
    "{b} background with a {c} {s} in the {p}",
    "there is a {c} {s} in the {p} of a {b} background",
)
_SENTENCES_NO_POS = ("a {c} {s} on a {b} background", "{b} background with a {c} {s}")


def sentence_caption(scene: Scene, rng: random.Random, *, drop_position: bool = False) -> str:
    """One of a few English templates, e.g. ``a red circle in the top left on a blue background``."""
    template = rng.choice(_SENTENCES_NO_POS if drop_position else _SENTENCES)
    return template.format(c=scene.colour, s=scene.shape, b=scene.background, p=scene.position)


def caption_for(scene: Scene, rng: random.Random, *, p_sentence: float = 0.5, p_drop_position: float = 0.1):
    """A random caption for `scene`: tags or a sentence; sometimes without the (then arbitrary) position."""
    drop = rng.random() < p_drop_position
    if rng.random() < p_sentence:
        return sentence_caption(scene, rng, drop_position=drop)
    return tag_caption(scene, rng, drop_position=drop)


def vocabulary_text(shapes: Sequence[str] = ALL_SHAPES) -> list[str]:
    """Every caption phrase the demo knows (tokenizer training corpus), star included."""
    lines = []
    for c, s, b, p in all_combos(shapes):
        scene = Scene(c, s, b, p)
        lines.append(tag_caption(scene))
        for t in _SENTENCES:
            lines.append(t.format(c=c, s=s, b=b, p=p))
        for t in _SENTENCES_NO_POS:
            lines.append(t.format(c=c, s=s, b=b, p=p))
    return lines


# ------------------------------------------------------------------------------------------ drawing
def _polygon(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.86  # equal visual weight to the circle
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # upright, base as wide as it is tall
        return [(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)]
    if shape == "star":  # five broad points (inner radius half the outer: an 8x8 latent keeps them)
        pts = []
        for k in range(10):
            rad = r * 1.2 if k % 2 == 0 else r * 0.6
            a = rotation + math.pi * k / 5 - math.pi / 2
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + r * 0.08))
        return pts
    raise AnimaError(f"no polygon for shape {shape!r}")


def render(scene: Scene, size: int = 64, supersample: int = 4):
    """The scene as an RGB PIL image of `size` x `size` (drawn `supersample` x larger, box-filtered)."""
    from PIL import Image, ImageDraw

    big = size * supersample
    img = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    fx, fy = POSITIONS[scene.position]
    cx, cy = (fx + scene.dx) * big, (fy + scene.dy) * big
    r = SHAPE_SIZE * scene.scale * big / 2
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r, scene.rotation), fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def render_batch(scenes: Iterable[tuple[Scene, str]]):
    """uint8 tensor [N, 64, 64, 3] of the scenes of (scene, caption) pairs, as the VAE trains on them."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([np.asarray(render(s)) for s, _ in scenes]))


def random_scene(combo: tuple[str, str, str, str], rng: random.Random, jitter: float = 0.03) -> Scene:
    c, s, b, p = combo
    return Scene(
        c,
        s,
        b,
        p,
        dx=rng.uniform(-jitter, jitter),
        dy=rng.uniform(-jitter, jitter),
        scale=rng.uniform(0.9, 1.1),
        rotation=rng.uniform(-0.15, 0.15) if s == NEW_SHAPE else 0.0,
    )


def scenes(
    combos: Sequence[tuple[str, str, str, str]], per_combo: int, seed: int
) -> Iterator[tuple[Scene, str]]:
    """`per_combo` jittered scenes per combo, each with its own random caption (deterministic)."""
    rng = random.Random(seed)
    for combo in combos:
        for _ in range(per_combo):
            scene = random_scene(combo, rng)
            yield scene, caption_for(scene, rng)


def write_dataset(
    out_dir: str | Path,
    combos: Sequence[tuple[str, str, str, str]],
    *,
    per_combo: int,
    size: int = 64,
    seed: int = 0,
) -> int:
    """Write ``NNNNN.png`` + ``NNNNN.txt`` pairs (the trainer's dataset layout); returns the count."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for n, (scene, caption) in enumerate(scenes(combos, per_combo, seed), start=1):
        stem = out / f"{n - 1:05d}"
        render(scene, size).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return n


def eval_prompts(
    combos: Sequence[tuple[str, str, str, str]], seed: int = 1
) -> list[tuple[tuple[str, str, str, str], str]]:
    """One prompt per combo, alternating tag and sentence style, for the evaluator."""
    rng = random.Random(seed)
    out = []
    for i, combo in enumerate(combos):
        scene = Scene(*combo)
        text = tag_caption(scene) if i % 2 == 0 else sentence_caption(scene, rng)
        out.append((combo, text))
    return out
