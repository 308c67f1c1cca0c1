"""The explorer's static gallery: thumbnails, ``gallery.json`` and a self-contained ``index.html``.

Built from the jobs and the files on disk, so it can be (re)built at any time, including after a
partial run: images not rendered yet are simply absent. Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import html
import json
from collections.abc import Sequence
from pathlib import Path

from anima.explore.template import PAGE
from anima.imageio import atomic_write
from anima.interop.a1111 import infotext
from anima.jobs.batch import BatchJob
from anima.jobs.store import OutputStore

THUMB_SIZE = 256


def _thumb_format() -> str:
    from PIL import features

    return "webp" if features.check("webp") else "jpeg"


def make_thumbnail(src: Path, dst: Path, size: int = THUMB_SIZE) -> Path:
    """A small copy of `src` (WebP when Pillow has it, else JPEG), written atomically."""
    from PIL import Image

    fmt = "WEBP" if dst.suffix == ".webp" else "JPEG"
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size))
        return atomic_write(dst, lambda fh: im.save(fh, format=fmt, quality=85))


def build_gallery(store: OutputStore, jobs: Sequence[BatchJob], *, title: str, prompt: str) -> Path:
    """Write thumbnails for finished images, ``gallery.json`` and ``index.html``; return the page."""
    ext = ".webp" if _thumb_format() == "webp" else ".jpg"
    artists: dict[str, dict] = {}
    for job in jobs:
        info = dict(job.info)
        name = info.get("artist", job.job_id or job.key)
        files = store.files_for(job.key, job.recipe.batch_size)
        if not all(p.is_file() for p in files):
            continue
        entry = artists.setdefault(
            name,
            {
                "name": name,
                "tag": info.get("tag", ""),
                "rank": int(info.get("rank", len(artists))),
                "images": [],
            },
        )
        for i, path in enumerate(files):
            thumb = store.root / "thumbs" / (path.stem + ext)
            if not thumb.is_file():
                make_thumbnail(path, thumb)
            recipe = job.recipe
            entry["images"].append(
                {
                    "seed": recipe.seed + i if len(files) > 1 else recipe.seed,
                    "file": path.relative_to(store.root).as_posix(),
                    "thumb": thumb.relative_to(store.root).as_posix(),
                    "parameters": infotext(recipe),
                    "recipe": recipe.to_dict(),
                }
            )
    gallery_id = hashlib.sha256(f"{store.root.resolve()}|{prompt}".encode()).hexdigest()[:12]
    data = {"id": gallery_id, "title": title, "prompt": prompt, "artists": list(artists.values())}
    text = json.dumps(data, ensure_ascii=False, indent=1)
    atomic_write(store.root / "gallery.json", lambda fh: fh.write(text.encode("utf-8")))
    embedded = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")
    page = (
        PAGE.replace("__TITLE__", html.escape(title))
        .replace("__CARD__", str(THUMB_SIZE + 40))
        .replace("__DATA__", embedded)
    )
    return atomic_write(store.root / "index.html", lambda fh: fh.write(page.encode("utf-8")))


def compare_sheet(store: OutputStore, jobs: Sequence[BatchJob], out: Path, *, cell: int = 256) -> Path | None:
    """One PNG: a column per artist (and mix), a row per seed, labels on top. None if nothing is done."""
    from PIL import Image, ImageDraw

    columns: dict[str, dict[str, Path]] = {}
    seeds: list[str] = []
    for job in jobs:
        info = dict(job.info)
        path = store.files_for(job.key, 1)[0]
        if job.recipe.batch_size != 1 or not path.is_file():
            continue
        columns.setdefault(info.get("tag", job.key), {})[info.get("seed", "")] = path
        if info.get("seed", "") not in seeds:
            seeds.append(info.get("seed", ""))
    if not columns:
        return None
    label_h = 24
    sheet = Image.new("RGB", (cell * len(columns), label_h + cell * len(seeds)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    for x, (tag, by_seed) in enumerate(columns.items()):
        draw.text((x * cell + 4, 6), tag[: cell // 7], fill=(230, 230, 230))
        for y, seed in enumerate(seeds):
            if seed in by_seed:
                with Image.open(by_seed[seed]) as im:
                    scale = cell / max(im.size)  # fit the cell, scaling small renders up too
                    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                    im = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
                    sheet.paste(im, (x * cell, label_h + y * cell))
    return atomic_write(out, lambda fh: sheet.save(fh, format="PNG"))
