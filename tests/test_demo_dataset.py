"""The demo's dataset, evaluator and tokenizers (no trained model needed)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from anima.demo import dataset
from anima.demo.evaluate import Detection, detect, score
from anima.errors import AnimaError


def test_split_holds_out_fifty_combinations_and_covers_every_word() -> None:
    train, held = dataset.split_combos()
    assert len(train) == 400 and len(held) == 50
    assert not set(train) & set(held)
    assert dataset.NEW_SHAPE not in {c[1] for c in train + held}
    for i, values in enumerate((dataset.COLOURS, dataset.SHAPES, dataset.COLOURS, dataset.POSITIONS)):
        assert {c[i] for c in train} == set(values)
    assert dataset.split_combos() == (train, held)


def test_captions_in_both_styles() -> None:
    scene = dataset.Scene("red", "circle", "blue", "top left")
    assert dataset.tag_caption(scene) == "red circle, blue background, top left"
    rng = random.Random(0)
    sentences = {dataset.sentence_caption(scene, rng) for _ in range(30)}
    assert "a red circle in the top left on a blue background" in sentences
    assert all("red circle" in s and "blue background" in s and "top left" in s for s in sentences)
    with pytest.raises(AnimaError, match="invisible"):
        dataset.Scene("red", "circle", "red", "centre")
    with pytest.raises(AnimaError, match="unknown shape"):
        dataset.Scene("red", "hexagon", "blue", "centre")


def test_evaluator_reads_every_rendered_scene_back() -> None:
    rng = random.Random(1)
    combos = dataset.all_combos(dataset.ALL_SHAPES)
    scenes = [dataset.random_scene(c, rng) for c in combos[::3]]
    detections = [detect(dataset.render(s)) for s in scenes]
    result = score(detections, [s.combo for s in scenes])
    assert result.all_right == result.total == len(scenes)
    # and at another size, as a float array
    big = np.asarray(dataset.render(scenes[0], size=128)).astype(np.float32) / 255
    assert detect(big).matches(scenes[0].combo)


def _polygon_image(points: list[tuple[float, float]], blur: float = 0.0):
    from PIL import Image, ImageDraw, ImageFilter

    img = Image.new("RGB", (64, 64), dataset.COLOURS["blue"])
    ImageDraw.Draw(img).polygon(points, fill=dataset.COLOURS["red"])
    return img.filter(ImageFilter.GaussianBlur(blur)) if blur else img


def _regular(n: int, r_out: float, r_in: float | None = None) -> list[tuple[float, float]]:
    """A regular n-gon (r_in None) or an n-pointed star, point up, centred at (32, 32)."""
    import math

    k = 2 * n if r_in else n
    return [
        (
            32 + (r_out if i % 2 == 0 or not r_in else r_in) * math.cos(-math.pi / 2 + 2 * math.pi * i / k),
            32 + (r_out if i % 2 == 0 or not r_in else r_in) * math.sin(-math.pi / 2 + 2 * math.pi * i / k),
        )
        for i in range(k)
    ]


def test_star_is_told_by_its_points_not_by_its_corners() -> None:
    # Soft stars (blurred: rounded points, as a 64x64 model draws them) are still stars.
    for blur in (0.0, 1.0, 1.5):
        assert detect(_polygon_image(_regular(5, 14, 7), blur)).shape == "star", blur
    # A pentagon has five corners but no points; four- and six-pointed stars are not "star" either.
    assert detect(_polygon_image(_regular(5, 14))).shape != "star"
    assert detect(_polygon_image(_regular(4, 14, 6))).shape != "star"
    assert detect(_polygon_image(_regular(6, 14, 8))).shape != "star"
    # A blurred circle, square and triangle keep their kinds.
    for shape in dataset.SHAPES:
        scene = dataset.Scene("red", shape, "blue", "centre")
        from PIL import ImageFilter

        assert detect(dataset.render(scene).filter(ImageFilter.GaussianBlur(1.0))).shape == shape


def test_evaluator_says_when_something_is_wrong() -> None:
    blank = np.full((64, 64, 3), 0.5, dtype=np.float32)
    d = detect(blank)
    assert d.shape is None and d.colour is None
    scene = dataset.Scene("yellow", "square", "black", "bottom right")
    d = detect(dataset.render(scene))
    assert d.matches(scene.combo)
    assert not d.matches(("yellow", "circle", "black", "bottom right"))
    s = score([d, Detection(None, None, "black", None)], [scene.combo, scene.combo])
    assert (s.all_right, s.background, s.shape) == (1, 2, 1)
    assert "50.0%" in s.summary()


def test_write_dataset_is_reproducible(tmp_path: Path) -> None:
    combos = dataset.split_combos()[0][:3]
    n = dataset.write_dataset(tmp_path / "a", combos, per_combo=2, seed=4)
    dataset.write_dataset(tmp_path / "b", combos, per_combo=2, seed=4)
    assert n == 6
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    assert (tmp_path / "a/00000.txt").read_text().strip()


def test_tokenizers_load_through_the_normal_tokenizer(tmp_path: Path) -> None:
    import json

    from anima.demo.tokenizer_train import train_tokenizers
    from anima.text.tokenize import AnimaTokenizer

    qwen, t5 = train_tokenizers(dataset.vocabulary_text(), tmp_path)
    assert {p.name for p in qwen.iterdir()} == {"vocab.json", "merges.txt", "tokenizer_config.json"}
    assert json.loads((t5 / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    tok = AnimaTokenizer.from_dirs(qwen, t5)
    out = tok.tokenize("red circle, blue background, top left")
    pieces = [tok._t5.id_to_token(i) for i in out.t5_ids]
    assert pieces == ["▁red", "▁circle", ",", "▁blue", "▁background", ",", "▁top", "▁left", "</s>"]
    assert len(tok.tokenize("a star").t5_ids) == 3  # "star" is a word of the vocabulary too
    assert tok.tokenize("").qwen_ids == [tok.qwen_pad_id]
    assert tok.tokenize("zebra (1.5)").t5_ids[-1] == tok.t5_eos_id  # unseen text still tokenizes
    assert tok._qwen.get_vocab_size() < 1000 and tok._t5.get_vocab_size() < 300


def test_evaluation_prompt_sets() -> None:
    from anima.demo.runner import parse_lora, prompts_for

    held = prompts_for(False, 50)
    train, held_combos = dataset.split_combos()
    assert [c for c, _ in held] == held_combos
    assert sum("," in text for _, text in held) == 25  # half tags, half sentences
    val = prompts_for(False, 20, split="train")
    assert len(val) == 20 and all(c in train for c, _ in val)
    stars = prompts_for(True, 50)
    assert len({c for c, _ in stars}) == 50 and all(c[1] == "star" and "star" in t for c, t in stars)
    with pytest.raises(AnimaError, match="only 50"):
        prompts_for(False, 51)
    assert parse_lora("a/b.safetensors:0.5") == ("a/b.safetensors", 0.5)
    assert parse_lora("c:/x.safetensors") == ("c:/x.safetensors", 1.0)
