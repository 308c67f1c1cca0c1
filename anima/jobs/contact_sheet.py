"""Draw a labelled contact sheet: cells in z, y, x order -> one RGB uint8 image.

Column labels run along the top, row labels down the left, and each Z slice is a block with its
label as a title, blocks stacked vertically. Cells of different sizes are centred in the largest
cell size. PIL's built-in font is used, so the sheet is the same wherever the same Pillow runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_PAD = 8
_GAP = 4  # white gutter between cells


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels; a single long word is cut."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
            continue
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def render_sheet(
    images: Sequence[np.ndarray],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    z_labels: Sequence[str],
) -> np.ndarray:
    """[H, W, 3] uint8 cells (z, y, x order) -> the sheet as [H, W, 3] uint8."""
    from PIL import Image, ImageDraw

    nz, ny, nx = max(1, len(z_labels)), max(1, len(y_labels)), max(1, len(x_labels))
    if len(images) != nz * ny * nx:
        raise ValueError(f"need {nz * ny * nx} cells, got {len(images)}")
    cw = max(int(a.shape[1]) for a in images) + _GAP
    ch = max(int(a.shape[0]) for a in images) + _GAP
    size = max(12, min(cw, ch) // 14)
    font = _font(size)
    line_h = size + 4
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 0
    if y_labels:
        left = min(max(cw // 2, 64), int(max(probe.textlength(t, font=font) for t in y_labels)) + 2 * _PAD)
    x_wrapped = [_wrap(probe, t, font, cw - 2 * _PAD) for t in x_labels]
    y_wrapped = [_wrap(probe, t, font, max(left - 2 * _PAD, 8)) for t in y_labels]
    top = (max(len(w) for w in x_wrapped) * line_h + 2 * _PAD) if x_labels else 0
    title = (line_h + 2 * _PAD) if z_labels else 0
    block_h = title + top + ny * ch
    sheet = Image.new("RGB", (left + nx * cw, nz * block_h), "white")
    draw = ImageDraw.Draw(sheet)
    for z in range(nz):
        y0 = z * block_h
        if z_labels:
            draw.text((_PAD, y0 + _PAD), z_labels[z], fill="black", font=font)
        for x, lines in enumerate(x_wrapped):
            for k, line in enumerate(lines):
                draw.text(
                    (left + x * cw + _PAD, y0 + title + _PAD + k * line_h), line, fill="black", font=font
                )
        for y in range(ny):
            cy = y0 + title + top + y * ch
            if y_labels:
                for k, line in enumerate(y_wrapped[y]):
                    draw.text((_PAD, cy + _PAD + k * line_h), line, fill="black", font=font)
            for x in range(nx):
                cell = np.asarray(images[(z * ny + y) * nx + x], dtype=np.uint8)
                ox = left + x * cw + (cw - cell.shape[1]) // 2
                oy = cy + (ch - cell.shape[0]) // 2
                sheet.paste(Image.fromarray(cell), (ox, oy))
    return np.asarray(sheet, dtype=np.uint8).copy()
