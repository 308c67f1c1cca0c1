"""LoRAs in use: `<lora:name:w>` prompt tags, `--lora name:w`, loras/ folders, the pipeline hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_MODEL_ARGS, TOKENIZERS, isolate_home, tiny_pipeline

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import read_recipe
from anima.lora.file import save_lora
from anima.lora.modules import LoRA
from anima.lora.prompt import extract_prompt_loras, parse_lora_arg
from anima.lora.targets import Target
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe

W = TINY / "weights"


# ------------------------------------------------------------------ parsing (no models)
@pytest.mark.parametrize(
    "prompt, clean, specs",
    [
        ("1girl, <lora:style:0.8>, smile", "1girl, smile", [("style", 0.8)]),
        ("<lora:a> red circle", "red circle", [("a", 1.0)]),
        ("red circle, <lora:a:1>, <LORA:b c:-.5>", "red circle", [("a", 1.0), ("b c", -0.5)]),
        ("(red:1.2), blue <lyco:k:0.3>", "(red:1.2), blue", [("k", 0.3)]),
        ("no tags, (x:1.1)", "no tags, (x:1.1)", []),
    ],
)
def test_prompt_tags(prompt: str, clean: str, specs: list) -> None:
    assert extract_prompt_loras(prompt) == (clean, specs)


def test_prompt_and_flag_errors() -> None:
    assert parse_lora_arg("style") == ("style", 1.0)
    assert parse_lora_arg("C:\\loras\\x.safetensors:0.25") == ("C:\\loras\\x.safetensors", 0.25)
    assert parse_lora_arg("name:with:colons") == ("name:with:colons", 1.0)
    for bad in ("<lora:x:abc>", "<lora::0.5>", "<lora:x:0.5:0.7>", "<lora:x:nan>"):
        with pytest.raises(AnimaError):
            extract_prompt_loras(f"cat, {bad}")


# ------------------------------------------------------------------ pipeline and CLI
def _lora(seed: int) -> dict[Target, LoRA]:
    """A visible LoRA on DiT, adapter and text-encoder layers of the tiny model."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        Target("dit", "blocks.0.self_attn.v_proj"): (256, 256),
        Target("dit", "blocks.1.mlp.layer2"): (256, 1024),
        Target("adapter", "blocks.0.self_attn.q_proj"): (128, 128),
        Target("te", "layers.1.mlp.up_proj"): (192, 64),
    }
    return {
        t: LoRA(torch.randn(4, i, generator=g) * 0.3, torch.randn(o, 4, generator=g) * 0.3, alpha=4.0)
        for t, (o, i) in shapes.items()
    }


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def lora_path(tmp_path_factory) -> Path:
    return save_lora(_lora(1), tmp_path_factory.mktemp("l") / "mystyle.safetensors", "sd-scripts")


def _recipe(**kw) -> Recipe:
    return Recipe(**{"prompt": "red circle", "width": 64, "height": 64, "steps": 3, "seed": 3,
                     "sampler": "euler", **kw})  # fmt: skip


def test_pipeline_applies_prompt_tags_and_recipe_loras(pipe: Pipeline, lora_path: Path) -> None:
    base = pipe.generate(_recipe())
    tagged = pipe.generate(_recipe(prompt=f"red circle, <lora:{lora_path}:0.8>"))
    assert tagged.recipes[0].prompt == "red circle"
    assert tagged.recipes[0].loras == ((str(lora_path), 0.8),)
    assert (tagged.latents - base.latents).abs().max() > 1e-2
    flagged = pipe.generate(_recipe(loras=((str(lora_path), 0.8),)))
    assert torch.equal(flagged.latents, tagged.latents)
    # The pipeline is the base model again afterwards, bit for bit.
    assert torch.equal(pipe.generate(_recipe()).latents, base.latents)
    assert all(type(m) is torch.nn.Linear for m in pipe.dit.modules() if isinstance(m, torch.nn.Linear))
    # Merged for speed: the same image up to float rounding, and again the base afterwards.
    merging = Pipeline.from_files(
        W / "anima_tiny_dit.safetensors", W / "qwen3_tiny_te.safetensors", W / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, options=RunOptions(device="cpu", dtype="fp32", merge_loras=True),
    )  # fmt: skip
    merged = merging.generate(_recipe(loras=((str(lora_path), 0.8),)))
    assert (merged.latents - tagged.latents).abs().max() < 1e-4
    assert torch.equal(merging.generate(_recipe()).latents, base.latents)


def test_pipeline_unknown_lora_is_an_error(pipe: Pipeline) -> None:
    with pytest.raises(AnimaError, match="not found"):
        pipe.generate(_recipe(loras=(("no-such-lora", 1.0),)))


MODEL = TINY_MODEL_ARGS
FAST = [
    "--size",
    "64x64",
    "--steps",
    "2",
    "--dtype",
    "fp32",
    "--no-progress",
    "--sampler",
    "euler",
    "--seed",
    "5",
]


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    isolate_home(tmp_path, monkeypatch)
    models = tmp_path / "models"
    save_lora(_lora(2), models / "loras" / "style" / "mystyle.safetensors", "comfy")
    return models


def test_cli_lora_flag_and_tag_from_models_folder(home: Path, capsys) -> None:
    b, c = home.parent / "b.png", home.parent / "c.png"
    args = ["generate", "red circle", *MODEL, *FAST, "--models-dir", str(home)]
    assert main([*args, "--lora", "mystyle:0.7", "-o", str(b)]) == 0
    assert read_recipe(b).loras == (("mystyle", 0.7),) and read_recipe(b).prompt == "red circle"
    tag = ["generate", "red circle, <lora:mystyle:0.7>", *MODEL, *FAST, "--models-dir", str(home)]
    assert main([*tag, "--merge-loras", "-o", str(c)]) == 0
    assert read_recipe(c).loras == (("mystyle", 0.7),) and read_recipe(c).prompt == "red circle"
    # Reproducing from the PNG re-applies the recorded LoRA.
    d = home.parent / "d.png"
    assert (
        main(
            [
                "generate",
                "--from-png",
                str(b),
                *MODEL,
                "--no-progress",
                "--models-dir",
                str(home),
                "-o",
                str(d),
            ]
        )
        == 0
    )
    assert read_recipe(d).loras == (("mystyle", 0.7),)
    from PIL import Image

    assert Image.open(b).tobytes() == Image.open(d).tobytes()


def test_cli_bad_loras_fail_before_loading(home: Path, capsys) -> None:
    out = home.parent / "x.png"
    args = ["generate", "cat", *MODEL, *FAST, "--models-dir", str(home), "-o", str(out)]
    assert main([*args, "--lora", "missing:0.5"]) == 2
    assert "LoRA 'missing' not found; known: mystyle" in capsys.readouterr().err
    sdxl = home / "loras" / "sdxl.safetensors"
    from anima.weights.safetensors import save

    save({"lora_unet_up_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8)}, sdxl)
    assert main([*args, "--lora", "sdxl"]) == 2
    assert "LoRA for Stable Diffusion" in capsys.readouterr().err
    assert main([*args, "--lora", str(W / "qwen3_tiny_te.safetensors")]) == 2
    assert "not a LoRA" in capsys.readouterr().err
    assert not out.exists()
