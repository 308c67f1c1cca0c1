"""`anima generate` speed/memory flags end to end on the tiny model, and their bad-input errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, TOKENIZERS

from anima.cli import main

W = TINY / "weights"
MODEL = [
    "--dit", str(W / "anima_tiny_dit.safetensors"),
    "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
    "--vae", str(W / "wan21_tiny_vae.safetensors"),
    "--tokenizer-dir", str(TOKENIZERS),
]  # fmt: skip
FAST = [
    "--size",
    "64x64",
    "--steps",
    "3",
    "--dtype",
    "fp32",
    "--no-progress",
    "--sampler",
    "euler",
    "--seed",
    "3",
]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("ANIMA_HOME", str(tmp_path / "anima-home"))
    monkeypatch.delenv("ANIMA_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


def test_flags_run_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "a.png"
    flags = [
        "--weights",
        "int8",
        "--vram-budget",
        "0.5",
        "--profile",
        "--attention",
        "sdpa",
        "--step-cache",
        "0.1",
    ]
    assert main(["generate", "1girl", *MODEL, *FAST, *flags, "-o", str(out)]) == 0
    assert out.exists()
    err = capsys.readouterr().err
    assert "DiT layers in int8" in err and "memory: budget 0.5 GB" in err and "step cache on" in err
    table = err[err.index("part") :].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["text", "dit", "vae"]
    assert "peak RSS" in table[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--vram-budget", "lots"], "--vram-budget takes a number"),
        (["--vram-budget", "-1"], "--vram-budget takes a number"),
        (["--step-cache", "2"], "--step-cache takes a threshold"),
        (["--attention", "flash9"], "unknown attention backend"),
        (["--vram-budget", "0.01"], "too small"),
    ],
)
def test_bad_flags_fail_in_one_line_and_write_nothing(tmp_path, capsys, flags, message) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "cat", *MODEL, *FAST, *flags, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err), err
    assert not out.exists()
