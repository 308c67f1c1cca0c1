"""`anima models` with quantised files: the listing shows each file's format and quant type, GGUF
files are discovered and generate, `anima models convert` writes GGUF and 8-bit files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import REPO, TINY, TOKENIZERS, isolate_home

from anima.cli import main
from anima.weights.file_format import describe_format

W = TINY / "weights"
GGUF_Q4K = REPO / "tests" / "data" / "gguf" / "anima_tiny_dit-q4_K.gguf"


def test_format_labels() -> None:
    assert describe_format(W / "anima_tiny_dit.safetensors") == "safetensors BF16"
    assert describe_format(GGUF_Q4K) == "GGUF Q4_K (65 BF16, 24 Q4_K)"


def test_listing_discovers_gguf_and_shows_formats(tmp_path: Path, monkeypatch, capsys) -> None:
    isolate_home(tmp_path, monkeypatch)
    models = tmp_path / "models"
    for sub, src in (("diffusion_models", GGUF_Q4K), ("text_encoders", W / "qwen3_tiny_te.safetensors"),
                     ("vae", W / "wan21_tiny_vae.safetensors")):  # fmt: skip
        (models / sub).mkdir(parents=True)
        shutil.copy(src, models / sub / src.name)
    assert main(["models", "list", "--models-dir", str(models), "--tokenizer-dir", str(TOKENIZERS)]) == 0
    out = capsys.readouterr().out
    assert "anima_tiny_dit-q4_K  [models-dir:" in out
    assert "anima_tiny_dit-q4_K.gguf  [GGUF Q4_K (65 BF16, 24 Q4_K)]" in out
    assert "qwen3_tiny_te.safetensors  [safetensors BF16]" in out
    png = tmp_path / "q4k.png"
    fast = ["--steps", "2", "--size", "64x64", "--seed", "1", "-o", str(png)]
    args = ["generate", "cat", "--models-dir", str(models), "--tokenizer-dir", str(TOKENIZERS), *fast]
    assert main(args) == 0 and png.is_file()


def test_convert_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "dit-q8_0.gguf"
    assert (
        main(["models", "convert", str(W / "anima_tiny_dit.safetensors"), str(out), "--to", "gguf-q8_0"]) == 0
    )
    assert "wrote" in capsys.readouterr().out and describe_format(out).startswith("GGUF Q8_0")
    eight = tmp_path / "dit-int8.safetensors"
    assert main(["models", "convert", str(W / "anima_tiny_dit.safetensors"), str(eight), "--to", "int8"]) == 0
    assert describe_format(eight) == "safetensors, ComfyUI comfy_quant (int8_tensorwise)"
    assert main(["models", "convert", str(W / "anima_tiny_dit.safetensors"), str(eight), "--to", "int8"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    rc = main(
        ["models", "convert", str(W / "anima_tiny_dit.safetensors"), str(tmp_path / "x.gguf"), "--to", "q4_k"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "unknown conversion target 'q4_k'" in err and "(--to)" in err and err.count("\n") == 1
    rc = main(
        [
            "models",
            "convert",
            str(W / "wan21_tiny_vae.safetensors"),
            str(tmp_path / "v.gguf"),
            "--to",
            "gguf-f16",
        ]
    )
    assert rc == 2 and "needs an Anima DiT or Qwen3 text encoder file" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["gguf-q4_0", "gguf-q5_1", "gguf-bf16"])
def test_converted_text_encoder_and_dit_load(tmp_path: Path, target: str) -> None:
    from anima.weights import loading

    te = tmp_path / f"te-{target}.gguf"
    assert main(["models", "convert", str(W / "qwen3_tiny_te.safetensors"), str(te), "--to", target]) == 0
    loading.load_text_encoder(te)
    dit = tmp_path / f"dit-{target}.gguf"
    assert main(["models", "convert", str(W / "anima_tiny_dit.safetensors"), str(dit), "--to", target]) == 0
    loading.load_dit(dit)


def test_bad_gguf_on_the_command_line_is_one_line(tmp_path: Path, capsys) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(GGUF_Q4K.read_bytes()[:100_000])
    te, vae = W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors"
    args = ["generate", "cat", "--dit", str(cut), "--text-encoder", str(te), "--vae", str(vae),
            "--tokenizer-dir", str(TOKENIZERS), "-o", str(tmp_path / "x.png")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("anima: error: ") and "truncated" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_listing_quantised_files_needs_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from anima.weights.discovery import inspect_file; "
        "from anima.weights.file_format import describe_format; "
        f"p = {str(GGUF_Q4K)!r}; print(inspect_file(p).kind, describe_format(p), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "dit GGUF Q4_K (65 BF16, 24 Q4_K) False"


def test_download_list_names_the_new_files(capsys) -> None:
    assert main(["models", "download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in (
        "aesthetic-v1.1",
        "turbo-v1.1",
        "turbo-lora-v0.2",
        "rl-v0.1",
        "highres-aesthetic-boost",
        "lllite",
    ):
        assert f"\n{name} " in "\n" + out, name
