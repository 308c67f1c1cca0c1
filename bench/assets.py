"""The files a benchmark run needs: full-size random weights and the same weights as a diffusers folder.

Both are expensive to write (about 6 GB) and deterministic, so they live in a cache folder outside the
repository and are reused while their headers still read back.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from anima.errors import AnimaError
from anima.weights.random import FILE_NAMES, RandomFiles, make_random
from anima.weights.safetensors import read_header

DEFAULT_CACHE = Path.home() / ".cache" / "anima-bench"
_DONE = ".complete"


def random_files(cache: Path, preset: str = "full") -> RandomFiles:
    """make_random(preset) into cache/random-<preset>, unless a complete earlier run is there."""
    folder = cache / f"random-{preset}"
    files = RandomFiles(**{k: folder / v.format(preset=preset) for k, v in FILE_NAMES.items()})
    if (folder / _DONE).exists():
        try:
            for p in (files.dit, files.text_encoder, files.vae):
                read_header(p)
            return files
        except AnimaError:
            pass
    made = make_random(preset, folder)
    (folder / _DONE).write_text("ok\n")
    return made


def diffusers_folder(files: RandomFiles, tokenizers: Path, out: Path) -> Path:
    """The random files as a diffusers Anima folder, written by the project's own exporter."""
    from anima.weights.export import export_diffusers

    if (out / _DONE).exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    export_diffusers(files.dit, files.text_encoder, files.vae, tokenizers / "qwen", tokenizers / "t5", tmp)
    (tmp / _DONE).write_text("ok\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
