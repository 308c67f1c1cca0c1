"""Training data: folder scan, aspect-ratio buckets, caption processing and the batch order.

Layout: ``photo.png`` + ``photo.txt`` (caption: Danbooru tags and/or sentences). Images are
assigned to the bucket (width, height) nearest in log aspect ratio among buckets of about
``resolution**2`` pixels with sides a multiple of ``bucket_step``, then resized to cover it and
centre-cropped. A batch holds images of one bucket.

The order is a pure function of (seed, epoch): every epoch shuffles each bucket's items and the list
of batches with a generator seeded by both. A training position is therefore just the global
micro-batch index ``m`` (``epoch = m // batches_per_epoch``), which makes resuming exact and lets
data-parallel ranks take interleaved micro-batches without talking to each other. Per-micro-batch
randomness (caption shuffling, tag and caption dropout, noise, timesteps) is seeded by (seed, m)
too, so it does not depend on how many processes or restarts there were.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anima.errors import AnimaError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

Bucket = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Item:
    image: Path
    caption: str
    size: tuple[int, int]  # original (width, height)
    bucket: Bucket


def scan_folder(data_dir: str | Path, caption_extension: str = ".txt") -> list[tuple[Path, str]]:
    """(image, caption) pairs sorted by file name; every image needs its caption file."""
    root = Path(data_dir)
    if not root.is_dir():
        raise AnimaError(f"data_dir {root}: no such folder")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    images = [p for p in images if not any(part.startswith(".") for part in p.relative_to(root).parts)]
    if not images:
        raise AnimaError(f"data_dir {root}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    missing = [p for p in images if not p.with_suffix(caption_extension).is_file()]
    if missing:
        raise AnimaError(
            f"{len(missing)} image(s) have no {caption_extension} caption, "
            f"e.g. {missing[0].relative_to(root)}"
        )
    return [(p, p.with_suffix(caption_extension).read_text(encoding="utf-8").strip()) for p in images]


def make_buckets(resolution: int, step: int, max_aspect: float) -> list[Bucket]:
    """Largest (w, h) multiples of `step` with w * h <= resolution**2 for each width, aspect-limited."""
    area = resolution * resolution
    out = set()
    w = step
    while w <= resolution * max_aspect:
        h = (area // w) // step * step
        if h >= step and max(w / h, h / w) <= max_aspect + 1e-9:
            out.add((w, h))
        w += step
    if not out:
        raise AnimaError(f"no bucket fits resolution {resolution} with step {step}")
    return sorted(out)


def nearest_bucket(size: tuple[int, int], buckets: Sequence[Bucket]) -> Bucket:
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def scan(cfg) -> list[Item]:
    """Items of `cfg.data_dir` with their buckets (reads image headers only)."""
    from PIL import Image

    buckets = make_buckets(cfg.resolution, cfg.bucket_step, cfg.max_aspect)
    items = []
    for path, caption in scan_folder(cfg.data_dir, cfg.caption_extension):
        try:
            with Image.open(path) as im:
                size = im.size
        except OSError as exc:
            raise AnimaError(f"{path}: unreadable image ({exc})") from None
        items.append(Item(path, caption, size, nearest_bucket(size, buckets)))
    return items


def load_image(item: Item):
    """uint8 tensor [H, W, 3] of the item resized to cover its bucket and centre-cropped."""
    import numpy as np
    import torch
    from PIL import Image

    bw, bh = item.bucket
    with Image.open(item.image) as im:
        im = im.convert("RGB")
        scale = max(bw / im.width, bh / im.height)
        rw, rh = max(bw, round(im.width * scale)), max(bh, round(im.height * scale))
        if (rw, rh) != im.size:
            im = im.resize((rw, rh), Image.Resampling.LANCZOS)
        left, top = (rw - bw) // 2, (rh - bh) // 2
        im = im.crop((left, top, left + bw, top + bh))
        return torch.from_numpy(np.array(im, dtype=np.uint8))


# ------------------------------------------------------------------ captions
def process_caption(
    caption: str,
    rng: random.Random,
    *,
    shuffle: bool = False,
    keep_tokens: int = 0,
    tag_dropout: float = 0.0,
    caption_dropout: float = 0.0,
) -> str:
    """The caption a micro-batch sees: maybe empty (CFG dropout), else tags dropped / shuffled.

    Tags are the comma-separated pieces; the first `keep_tokens` stay in place and are never dropped
    (sd-scripts' convention). A sentence without commas is one tag, so shuffling leaves it intact.
    """
    if caption_dropout > 0 and rng.random() < caption_dropout:
        return ""
    if not shuffle and tag_dropout <= 0:
        return caption
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    kept, rest = tags[:keep_tokens], tags[keep_tokens:]
    if tag_dropout > 0:
        rest = [t for t in rest if rng.random() >= tag_dropout]
    if shuffle:
        rng.shuffle(rest)
    return ", ".join(kept + rest)


# ------------------------------------------------------------------ order
def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from several values (stable across runs and platforms)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BatchOrder:
    """Deterministic batches: micro-batch index -> item indices (all from one bucket)."""

    def __init__(self, buckets: Sequence[Bucket], batch_size: int, seed: int, repeats: int = 1) -> None:
        self.batch_size, self.seed = batch_size, seed
        self.groups: dict[Bucket, list[int]] = {}
        for i, b in enumerate(buckets):
            self.groups.setdefault(b, []).extend([i] * repeats)
        self.batches_per_epoch = sum(math.ceil(len(v) / batch_size) for v in self.groups.values())
        self._epoch: tuple[int, list[list[int]]] | None = None

    def epoch(self, e: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != e:
            rng = random.Random(mix_seed("order", self.seed, e))
            batches: list[list[int]] = []
            for bucket in sorted(self.groups):
                idx = list(self.groups[bucket])
                rng.shuffle(idx)
                batches += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
            rng.shuffle(batches)
            self._epoch = (e, batches)
        return self._epoch[1]

    def batch(self, micro: int) -> list[int]:
        e, i = divmod(micro, self.batches_per_epoch)
        return self.epoch(e)[i]
