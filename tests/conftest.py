"""Shared test paths. Fixtures come from ../shared (never from the network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANIMA_SHARED", REPO.parent / "shared"))
TINY = SHARED / "fixtures" / "anima-tiny"
TOKENIZERS = SHARED / "fixtures" / "tokenizers"
# The tiny fixture model as `anima` CLI flags.
TINY_MODEL_ARGS = [
    "--dit", str(TINY / "weights" / "anima_tiny_dit.safetensors"),
    "--text-encoder", str(TINY / "weights" / "qwen3_tiny_te.safetensors"),
    "--vae", str(TINY / "weights" / "wan21_tiny_vae.safetensors"),
    "--tokenizer-dir", str(TOKENIZERS),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must never reach a model hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def isolate_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model discovery must not see the developer's real ComfyUI / HF cache / data folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("ANIMA_HOME", str(tmp_path / "anima-home"))
    monkeypatch.delenv("ANIMA_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_home(tmp_path, monkeypatch)


def load_st(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
