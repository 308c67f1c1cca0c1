"""Resumable training checkpoints: one folder per step, written atomically.

``<output_dir>/checkpoints/step-0000500/state.pt`` holds everything the next step depends on: the
trained weights (LoRA factors or the full parts), optimizer and scheduler state, the EMA, the step,
the data position and the RNG states, plus the config for reference. The folder is written under a
temporary name and renamed when complete, so a run killed at any moment (SIGKILL included) leaves
either the previous checkpoints or the new one, never a half-written folder that `latest` picks.
Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from anima.errors import AnimaError

_NAME = re.compile(r"^step-(\d{7,})$")
STATE_FILE = "state.pt"


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    output_dir: str | Path, step: int, state: dict[str, Any], config_json: str, keep: int
) -> Path:
    """Write ``step-NNNNNNN`` atomically and delete all but the newest `keep` checkpoints."""
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    (tmp / "config.json").write_text(config_json + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(root)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str, output_dir: str | Path) -> Path | None:
    """'' -> None; 'latest' -> newest checkpoint of output_dir (None if there is none yet); else a folder."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not (path / STATE_FILE).is_file():
        raise AnimaError(f"resume {resume}: not a checkpoint folder (no {STATE_FILE} inside)")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt pickles
        raise AnimaError(f"{path}: unreadable checkpoint ({exc.__class__.__name__}: {exc})") from None


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU and CUDA, Python's `random`) for exact resumption."""
    import random

    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x: Any) -> Any:
    """`random.setstate` wants nested tuples; a pickle round trip may give lists."""
    if isinstance(x, list | tuple):
        return tuple(_as_tuple(v) for v in x)
    return x
