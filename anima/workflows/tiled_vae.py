"""Tiled VAE: when to tile, and a tiled encode to go with `WanVAE.decode_tiled`.

``auto`` tiles when the estimated peak memory of an untiled decode exceeds half of the memory that
is free on the device (CUDA: ``mem_get_info``; CPU: ``MemAvailable`` from /proc/meminfo, or never
when unknown). The estimate is ``5 x H x W x base_width x bytes``: the decoder's last stage holds a
handful of full-resolution tensors of ``base_width`` channels (5 was measured on the tiny VAE:
a 1024x1024 fp32 decode with width 24 peaked at ~450 MiB over the baseline).

Tiled encode cuts the image into overlapping pixel tiles (multiples of 8), encodes each and blends
the latent tiles with linear ramps over the overlaps. Like the tiled decode it is not exact (the
encoder's mid-block attention is global), only close.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from anima.errors import AnimaError

log = logging.getLogger(__name__)

TILED_MODES = ("auto", "on", "off")
PEAK_FACTOR = 5


def decode_peak_bytes(height_px: int, width_px: int, base_width: int, dtype: torch.dtype) -> int:
    """Rough peak extra memory of an untiled decode of one image."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return PEAK_FACTOR * height_px * width_px * base_width * itemsize


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device`, or None when it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def should_tile(
    mode: str,
    height_px: int,
    width_px: int,
    base_width: int,
    dtype: torch.dtype,
    budget: int | None,
    batch: int = 1,
) -> bool:
    """The decision for ``--tiled-vae``; `budget` is the free memory (None = unknown)."""
    if mode not in TILED_MODES:
        raise AnimaError(f"unknown tiled VAE mode {mode!r}; choose from {', '.join(TILED_MODES)}")
    if mode != "auto":
        return mode == "on"
    if budget is None:
        return False
    return batch * decode_peak_bytes(height_px, width_px, base_width, dtype) > budget // 2


def _ramp(length: int, ramp_in: int, ramp_out: int) -> torch.Tensor:
    """1-D weights: linear ramps of (j + 0.5) / n over the overlaps, so neighbours sum to 1."""
    w = torch.ones(length)
    if ramp_in > 0:
        w[:ramp_in] *= (torch.arange(ramp_in) + 0.5) / ramp_in
    if ramp_out > 0:
        w[length - ramp_out :] *= (torch.arange(ramp_out, 0, -1) - 0.5) / ramp_out
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile origins covering [0, size); neighbours overlap by at least `overlap`."""
    if size <= tile:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def encode_tiled(encode, image: torch.Tensor, tile_px: int = 512, overlap_px: int = 64) -> torch.Tensor:
    """``encode([B, 3, H, W] in [-1, 1]) -> [B, C, 1, H/8, W/8]`` in overlapping tiles.

    `encode` is the VAE's encode; H and W must be multiples of 8, as must `tile_px`/`overlap_px`.
    Tiles are laid out in latent units, so every tile edge is on the 8-pixel grid.
    """
    f = 8
    if tile_px % f or overlap_px % f or not 0 <= overlap_px < tile_px:
        raise AnimaError(f"bad encode tiling: tile {tile_px}, overlap {overlap_px} (multiples of 8, < tile)")
    b, _, h, w = image.shape
    hl, wl = h // f, w // f
    th, tw, ov = min(tile_px // f, hl), min(tile_px // f, wl), overlap_px // f
    ys, xs = _starts(hl, th, ov), _starts(wl, tw, ov)
    out: torch.Tensor | None = None
    weight = torch.zeros(1, 1, 1, hl, wl, device=image.device)
    for iy, y0 in enumerate(ys):
        ry_in = ys[iy - 1] + th - y0 if iy > 0 else 0
        ry_out = y0 + th - ys[iy + 1] if iy + 1 < len(ys) else 0
        wy = _ramp(th, ry_in, ry_out)
        for ix, x0 in enumerate(xs):
            rx_in = xs[ix - 1] + tw - x0 if ix > 0 else 0
            rx_out = x0 + tw - xs[ix + 1] if ix + 1 < len(xs) else 0
            mask = (wy[:, None] * _ramp(tw, rx_in, rx_out)[None, :]).to(image.device)
            tile = encode(image[..., y0 * f : (y0 + th) * f, x0 * f : (x0 + tw) * f]).float()
            if out is None:
                out = torch.zeros(b, tile.shape[1], 1, hl, wl, device=image.device)
            sl = (..., slice(y0, y0 + th), slice(x0, x0 + tw))
            out[sl] += tile * mask
            weight[sl] += mask
    assert out is not None
    return out / weight
