"""TrainConfig: TOML tables + flags, relative paths, one-line errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from anima.errors import AnimaError
from anima.train.config import TrainConfig, add_flags, config_from_args, make_config, read_toml


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("config", nargs="?")
    add_flags(p)
    return p.parse_args(argv)


def test_toml_tables_are_flattened_and_paths_resolved(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text(
        '[model]\ndit = "w/dit.safetensors"\n[data]\ndata_dir = "imgs"\nshuffle_captions = true\n'
        '[train]\nsteps = 50\nlr = 2e-4\nsample_prompts = ["a cat", "a dog"]\n'
    )
    values = read_toml(tmp_path / "cfg.toml")
    assert values["dit"] == str(tmp_path / "w/dit.safetensors")
    assert values["data_dir"] == str(tmp_path / "imgs")
    cfg = make_config(values)
    assert cfg.steps == 50 and cfg.lr == 2e-4 and cfg.shuffle_captions
    assert cfg.sample_prompts == ("a cat", "a dog")
    assert cfg.random_captions


def test_flags_override_the_file(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text("steps = 50\nrank = 8\nema_decay = 0.9\n")
    args = _parse([str(tmp_path / "cfg.toml"), "--steps", "7", "--no-cache-latents", "--sample-prompt", "x",
                   "--sample-prompt", "y", "--resume"])  # fmt: skip
    cfg = config_from_args(args, args.config)
    assert cfg.steps == 7 and cfg.rank == 8 and cfg.ema_decay == 0.9
    assert cfg.cache_latents is False
    assert cfg.sample_prompts == ("x", "y")
    assert cfg.resume == "latest"
    # every field has a flag
    flags = _parse(["--network", "full", "--train-adapter", "--lr", "0.5"])
    assert config_from_args(flags, None).network == "full"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz = 3", "did you mean 'steps'"),
        ("steps = 'many'", "steps must be an integer"),
        ("network = 'dora'", "network must be one of"),
        ("bucket_step = 24", "multiple of 16"),
        ("tag_dropout = 1.5", "tag_dropout must be in [0, 1]"),
        ("steps = 1\n[x]\nsteps = 2", "given twice"),
        ("steps = [", "not a valid TOML"),
        ("network = 'full'\ntrain_text_encoder = true", "full training of the text encoder"),
    ],
)
def test_bad_values_fail_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    with pytest.raises(AnimaError) as err:
        make_config(read_toml(path))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_inputs_are_named(tmp_path: Path) -> None:
    cfg = TrainConfig(dit=str(tmp_path / "nope.safetensors"))
    with pytest.raises(AnimaError, match="dit .*nope.safetensors: not found"):
        cfg.check_inputs()
    with pytest.raises(AnimaError, match="text_encoder is not set"):
        TrainConfig(dit=str(tmp_path)).check_inputs()


def test_json_round_trip() -> None:
    import json

    cfg = TrainConfig(sample_prompts=("a",), steps=3)
    assert make_config(json.loads(cfg.to_json())) == cfg
