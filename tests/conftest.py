"""Shared test paths. Fixtures come from ../shared (never from the network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ANIMA_SHARED", REPO.parent / "shared"))
TINY = SHARED / "fixtures" / "anima-tiny"
TOKENIZERS = SHARED / "fixtures" / "tokenizers"


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must never reach a model hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def load_st(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))
