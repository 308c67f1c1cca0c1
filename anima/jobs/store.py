"""Where a batch (or explorer) run keeps its images, progress index and manifest; resumable.

Layout of an output folder::

    images/<key>.png      one file per finished image, written atomically (temp file + rename)
    index.jsonl           append-only progress log: one JSON line per finished job
    manifest.json         the jobs in input order with status and files, rewritten atomically

A job is done when all its image files exist; because each file appears by an atomic rename it is
either absent or complete, whatever killed the previous run. The index is an append-only log so a
59k-image run costs one short line per image; a line cut short by a crash is cut off on reopening,
and a finished image that the crash kept out of the log is logged as ``recovered`` (not rendered
again). Each job therefore has exactly one index line, whatever the number of restarts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anima.errors import AnimaError
from anima.imageio import atomic_write, save_png

MANIFEST_FORMAT = "anima-batch/1"


@dataclass(frozen=True)
class Outcome:
    """What became of one job: ``done`` with files, or ``error`` with a one-line message."""

    status: str
    files: tuple[str, ...] = ()
    error: str = ""


class OutputStore:
    """Images, index and manifest of one output folder. Only the driver process writes here."""

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise AnimaError(f"output {self.root} exists and is not a folder")
        self.images = self.root / "images"
        self.index_path = self.root / "index.jsonl"
        self.manifest_path = self.root / "manifest.json"
        self._logged: dict[str, dict] | None = None

    # ---------------------------------------------------------------- files
    def files_for(self, key: str, count: int) -> list[Path]:
        if count == 1:
            return [self.images / f"{key}.png"]
        return [self.images / f"{key}_{i}.png" for i in range(count)]

    def is_done(self, key: str, count: int) -> bool:
        return all(p.is_file() for p in self.files_for(key, count))

    def save(
        self, key: str, images: Sequence[Any], recipes: Sequence[Any], info: dict | None = None
    ) -> list[Path]:
        """Write the PNGs of one job atomically, then log it. Returns the paths."""
        paths = self.files_for(key, len(images))
        for i, (path, img, recipe) in enumerate(zip(paths, images, recipes, strict=True)):
            extra = {"batch_index": i} if len(images) > 1 else None
            save_png(path, img, recipe, extra_json=extra)
        self.log(key, paths, info)
        return paths

    # ---------------------------------------------------------------- index
    def logged(self) -> dict[str, dict]:
        """key -> index record, reading the log once (broken lines are ignored)."""
        if self._logged is None:
            self._logged = {}
            if self.index_path.is_file():
                for line in self.index_path.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                        self._logged.setdefault(rec["key"], rec)
        return self._logged

    def open_log(self) -> None:
        """Cut a half-written last line left by a crash, so the next record starts on its own line."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.index_path.is_file():
            return
        data = self.index_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with open(self.index_path, "r+b") as fh:
                fh.truncate(len(keep))
            self._logged = None

    def log(self, key: str, paths: Iterable[Path], info: dict | None = None, recovered: bool = False) -> None:
        rec = {"key": key, "files": [str(p.relative_to(self.root)) for p in paths]}
        if recovered:
            rec["recovered"] = True
        if info:
            rec.update(info)
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with open(self.index_path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.logged()[key] = rec

    def recover(self, key: str, count: int, info: dict | None = None) -> None:
        """Log a job whose images exist but whose index line was lost (killed between the two)."""
        if key not in self.logged() and self.is_done(key, count):
            self.log(key, self.files_for(key, count), info, recovered=True)

    # ---------------------------------------------------------------- manifest
    def write_manifest(self, entries: list[dict], extra: dict | None = None) -> Path:
        """Atomically write the manifest: `entries` in input order (no timestamps: deterministic)."""
        doc = {"format": MANIFEST_FORMAT, **(extra or {}), "jobs": entries}
        data = (json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
        return atomic_write(self.manifest_path, lambda fh: fh.write(data))
