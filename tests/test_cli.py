"""`anima generate` and `anima models` end to end, and the table of bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_MODEL_ARGS, TOKENIZERS, isolate_home
from PIL import Image

from anima.cli import main

W = TINY / "weights"
MODEL = TINY_MODEL_ARGS
FAST = ["--size", "64x64", "--steps", "2", "--dtype", "fp32", "--no-progress", "--sampler", "euler"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_home(tmp_path, monkeypatch)


def test_generate_writes_png_with_metadata(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "img.png"
    rc = main(["generate", "1girl, silver hair", *MODEL, *FAST, "--seed", "7", "-o", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "seed: 7" in err
    im = Image.open(out)
    assert im.size == (64, 64)
    params = im.info["parameters"]
    assert params.startswith("1girl, silver hair\nNegative prompt: worst quality")
    assert "Steps: 2" in params and "Seed: 7" in params and "Size: 64x64" in params
    recipe = json.loads(im.info["anima_recipe"])
    assert recipe["seed"] == 7 and recipe["sampler"] == "euler" and recipe["model"] == "anima_tiny_dit"
    # A1111 / civitai "Model hash" (AutoV2): the first 10 hex digits of the file's SHA-256.
    digest = hashlib.sha256((W / "anima_tiny_dit.safetensors").read_bytes()).hexdigest()[:10]
    assert recipe["model_hash"] == digest and f"Model hash: {digest}" in params


def test_from_png_reproduces_the_image(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "(red:1.3) flowers", *MODEL, *FAST, "--cfg", "3", "-o", str(a)]) == 0
    assert main(["generate", "--from-png", str(a), *MODEL, "--no-progress", "-o", str(b)]) == 0
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert json.loads(Image.open(a).info["anima_recipe"]) == json.loads(Image.open(b).info["anima_recipe"])


def test_batch_writes_numbered_files(tmp_path: Path) -> None:
    out = tmp_path / "batch.png"
    assert main(["generate", "cat", *MODEL, *FAST, "--batch-size", "2", "-o", str(out)]) == 0
    assert (tmp_path / "batch_0.png").exists() and (tmp_path / "batch_1.png").exists()
    assert not out.exists()


def test_random_seed_is_printed_and_saved(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.png"
    assert main(["generate", "cat", *MODEL, *FAST, "-o", str(out)]) == 0
    seed = int(capsys.readouterr().err.split("seed: ")[1].split()[0])
    assert json.loads(Image.open(out).info["anima_recipe"])["seed"] == seed


def test_make_random_then_models_dir_discovery(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models"
    assert main(["models", "make-random", "--preset", "tiny", str(models)]) == 0
    capsys.readouterr()
    layout = tmp_path / "layout"
    for sub, pat in (("diffusion_models", "anima-*"), ("text_encoders", "qwen3-*"), ("vae", "qwen-image-*")):
        (layout / sub).mkdir(parents=True)
        for f in models.glob(pat):
            shutil.copy(f, layout / sub / f.name)
    assert main(["models", "list", "--models-dir", str(layout), "--tokenizer-dir", str(TOKENIZERS)]) == 0
    listing = capsys.readouterr().out
    assert "anima-random-tiny" in listing and "tokenizers: ok" in listing
    out = tmp_path / "d.png"
    rc = main(
        [
            "generate",
            "cat",
            "--models-dir",
            str(layout),
            "--tokenizer-dir",
            str(TOKENIZERS),
            *FAST,
            "-o",
            str(out),
        ]
    )
    assert rc == 0 and out.exists()


def _bad(tmp_path: Path, name: str) -> list[str]:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((W / "anima_tiny_dit.safetensors").read_bytes()[:500_000])
    empty_tok = tmp_path / "tok"
    (empty_tok / "qwen").mkdir(parents=True)
    (empty_tok / "t5").mkdir(parents=True)
    (empty_tok / "qwen" / "vocab.json").write_text("{broken")
    model = list(MODEL)

    def swap(flag: str, value: str) -> list[str]:
        m = list(model)
        m[m.index(flag) + 1] = value
        return m

    return {
        "missing_path": swap("--dit", str(tmp_path / "nope.safetensors")),
        "wrong_kind": swap("--dit", str(W / "wan21_tiny_vae.safetensors")),
        "corrupt_file": swap("--vae", str(corrupt)),
        "truncated_file": swap("--dit", str(truncated)),
        "unsupported_size": [*model, "--size", "100x64"],
        "steps_zero": [*model, "--steps", "0"],
        "negative_cfg": [*model, "--cfg", "-1"],
        "unknown_sampler": [*model, "--sampler", "euler_magic"],
        "unknown_scheduler": [*model, "--scheduler", "warp"],
        "unreadable_tokenizer": swap("--tokenizer-dir", str(empty_tok)),
        "bad_dtype": [*model, "--dtype", "fp13"],
        "denoise_without_image": [*model, "--denoise", "0.5"],
    }[name]


BAD = [
    ("missing_path", "not found"),
    ("wrong_kind", "Qwen-Image / Wan-2.1 VAE file, not a DiT"),
    ("corrupt_file", "corrupt"),
    ("truncated_file", "truncated"),
    ("unsupported_size", "multiple of 8"),
    ("steps_zero", "steps"),
    ("negative_cfg", "cfg"),
    ("unknown_sampler", "sampler"),
    ("unknown_scheduler", "scheduler"),
    ("unreadable_tokenizer", "qwen/ folder missing or incomplete"),
    ("bad_dtype", "dtype"),
    ("denoise_without_image", "init"),
]


@pytest.mark.parametrize(("case", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, needle: str
) -> None:
    out_dir = tmp_path / "outputs"
    args = ["generate", "cat", *_bad(tmp_path, case), "--no-progress", "-o", str(out_dir / "x.png")]
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("anima: error: ")
    assert needle.lower() in err.lower(), err
    assert not out_dir.exists()


def test_console_script_exit_status(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "anima", "generate", "cat", "--steps", "-3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "steps" in r.stderr
    assert "Traceback" not in r.stderr
