"""Tiled image-to-image inference with feathered overlaps, and smaller tiles on out-of-memory.

An upscaler model's memory grows with the tile it sees, so large images go through in tiles, as
ComfyUI's ``ImageUpscaleWithModel`` does (tiles of 512 px overlapping by 32, the tile size halved
after an out-of-memory error, down to 128). Our tiling, written from the idea rather than the code:

- tile starts along each axis step by ``tile - overlap``; the last tile is moved back to end at the
  border, so every tile has the full size (models with size rules see the shapes they like);
- each output tile is weighted by a linear ramp across the overlapped band on the sides that meet
  another tile (weight 1 elsewhere, so borders are not faded), and the weighted sum is divided by the
  summed weights: a cross-fade where tiles overlap, the tile itself where they do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from anima.errors import AnimaError

log = logging.getLogger(__name__)

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 128
ImageFn = Callable[[torch.Tensor], torch.Tensor]  # [1, C, h, w] -> [1, C, h * s, w * s]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px covering `size` px with at least `overlap` px shared."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, feather: int, fade_start: bool, fade_end: bool) -> torch.Tensor:
    """1D weights: ramps of `feather` samples, (1..feather)/(feather+1), at the faded ends."""
    w = torch.ones(length)
    f = min(feather, length // 2)
    if f > 0:
        up = torch.arange(1, f + 1, dtype=torch.float32) / (f + 1)
        if fade_start:
            w[:f] = up
        if fade_end:
            w[length - f :] = up.flip(0)
    return w


def tiled_apply(fn: ImageFn, image: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """`fn` over `image` [1, C, H, W] in overlapping tiles -> [1, C, H*scale, W*scale] (float32,
    on `image`'s device). An image that fits one tile is a single call, exactly `fn(image)`."""
    _, _, h, w = image.shape
    if h <= tile and w <= tile:
        return fn(image)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    out: torch.Tensor | None = None
    total = torch.zeros(1, 1, h * scale, w * scale, device=image.device)
    feather = overlap * scale
    for y in ys:
        wy = _ramp(th * scale, feather, y > 0, y + th < h).to(image.device)
        for x in xs:
            wx = _ramp(tw * scale, feather, x > 0, x + tw < w).to(image.device)
            part = fn(image[:, :, y : y + th, x : x + tw]).float()
            if out is None:  # the channels are the model's
                out = torch.zeros(1, part.shape[1], h * scale, w * scale, device=image.device)
            weight = wy[:, None] * wx[None, :]
            rows, cols = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            region = (slice(None), slice(None), rows, cols)
            out[region] += part * weight
            total[region] += weight
    assert out is not None
    return out / total


def _oom_errors() -> tuple[type[BaseException], ...]:
    kinds = [getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)]
    return tuple(k for k in kinds if isinstance(k, type))


def shrinking_tiles(run: Callable[[int], torch.Tensor], tile: int = DEFAULT_TILE) -> torch.Tensor:
    """`run(tile)`, halving the tile after each out-of-memory error while it stays >= 128 px."""
    errors = _oom_errors()
    while True:
        try:
            return run(tile)
        except errors:
            if tile // 2 < MIN_TILE:
                raise AnimaError(
                    f"the upscaler ran out of memory even with {tile} px tiles; use a smaller image or a CPU"
                ) from None
            tile //= 2
            log.warning("upscaler out of memory: retrying with %d px tiles", tile)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
