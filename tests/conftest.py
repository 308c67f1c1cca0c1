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


def tiny_pipeline(**options):
    """The tiny fixture model as a CPU fp32 `Pipeline` (the library-level tests' model); `options`:
    more `RunOptions` fields (``cpu_gemm="onednn"``)."""
    from anima.pipeline import Pipeline

    w = TINY / "weights"
    return Pipeline.from_files(
        w / "anima_tiny_dit.safetensors", w / "qwen3_tiny_te.safetensors", w / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, device="cpu", dtype="fp32", **options,
    )  # fmt: skip


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


def ulps_apart(a, b) -> int:
    """Largest distance, in float32 units in the last place, between two float32 tensors.

    Why: torch's vectorised float32 kernels (``pow``, ``exp``, ``log``, reductions) round differently
    per vector ISA (AVX2, AVX-512, NEON), so a result computed by ComfyUI on one CPU family can sit
    a few ulps from ours on another. A bit-for-bit comparison against such a fixture tests the CPU,
    not our code; "within a few ulps" is the tightest bound the maths allows on every ISA.
    """
    import torch

    a, b = a.detach().to(torch.float32).contiguous(), b.detach().to(torch.float32).contiguous()
    assert a.shape == b.shape, (a.shape, b.shape)

    def ordered(t):  # float32 bits as integers that increase with the float value
        i = t.view(torch.int32).to(torch.int64)
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)

    if a.numel() == 0:
        return 0
    return int((ordered(a) - ordered(b)).abs().max())


def assert_noise_matches_fixture(got, expected) -> None:
    """Seed noise against ComfyUI's (drawn on an x86 CPU with AVX2).

    torch draws the same mt19937 stream everywhere, but turns it into normals with its AVX2
    Box-Muller kernel only where the CPU has AVX2 (AVX-512 machines use the same kernel); elsewhere
    (arm64, or ``ATEN_CPU_CAPABILITY=default``) a scalar path with libm's log/sin/cos, measured at
    most 1.8e-6 away. So: a few ulps on x86 with AVX2 or better, 4e-6 absolute otherwise.
    """
    import torch

    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert ulps_apart(got, expected) <= 4
    else:
        assert (got - expected).abs().max() <= 4e-6
