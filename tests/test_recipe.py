"""Recipe: defaults, validation messages, JSON round trip, size presets."""

from __future__ import annotations

import json

import pytest

from anima.errors import AnimaError
from anima.recipe import DEFAULT_NEGATIVE, MAX_SEED, SIZE_PRESETS, Recipe, nearest_valid_size, parse_size

SAMPLERS = {"euler", "euler_ancestral", "er_sde", "dpmpp_2m"}
SCHEDULERS = {"simple", "karras", "normal"}


def test_defaults_match_the_official_template() -> None:
    r = Recipe("1girl")
    assert (r.width, r.height, r.steps, r.cfg, r.sampler, r.scheduler, r.shift) == (
        1024,
        1024,
        30,
        4.0,
        "er_sde",
        "simple",
        3.0,
    )
    assert r.negative_prompt == DEFAULT_NEGATIVE
    assert r.validate(SAMPLERS, SCHEDULERS) is r


def test_recipe_is_frozen_and_hashable_with_lists_frozen() -> None:
    r = Recipe("x", loras=[["style", 1]], extra={"Guidance": "apg"})
    assert r.loras == (("style", 1.0),) and r.extra == (("Guidance", "apg"),)
    assert hash(r) == hash(Recipe("x", loras=(("style", 1.0),), extra=(("Guidance", "apg"),)))
    with pytest.raises(AttributeError):
        r.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"cfg": -0.5}, "cfg"),
        ({"cfg": float("nan")}, "cfg"),
        ({"width": 8}, "width 8 is outside"),
        ({"height": 8208}, "height 8208 is outside"),
        ({"width": 1000}, "nearest valid width is 1008"),
        ({"height": 1030}, "nearest valid height is 1024"),
        ({"batch_size": 0}, "batch size"),
        ({"denoise": 0.0}, "denoise"),
        ({"denoise": 1.5}, "denoise"),
        ({"seed": -1}, "seed"),
        ({"seed": MAX_SEED + 1}, "seed"),
        ({"shift": 0.0}, "shift"),
        ({"dtype": "fp8"}, "dtype"),
        ({"sampler": "eulr"}, "did you mean 'euler'"),
        ({"scheduler": "karas"}, "did you mean 'karras'"),
        ({"loras": (("", 1.0),)}, "LoRA"),
        ({"extra": (("bad:key", "v"),)}, "extra"),
    ],
)
def test_validate_rejects_with_one_line(changes: dict, needle: str) -> None:
    with pytest.raises(AnimaError) as err:
        Recipe("x").with_(**changes).validate(SAMPLERS, SCHEDULERS)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_validate_accepts_edges() -> None:
    ok = Recipe("", seed=MAX_SEED, width=16, height=8192, denoise=1e-3, cfg=0.0, batch_size=4)
    ok.validate(SAMPLERS, SCHEDULERS)


def test_nearest_valid_size() -> None:
    # 1016 sits halfway between 1008 and 1024: ties go up.
    got = [nearest_valid_size(v) for v in (1000, 1007, 1008, 1015, 1016, 1, 99999)]
    assert got == [1008, 1008, 1008, 1008, 1024, 16, 8192]


def test_json_round_trip() -> None:
    r = Recipe(
        "ye-pop\nA title\n@artist, 1girl, 彼女",
        negative_prompt="",
        width=832,
        height=1216,
        steps=12,
        cfg=1.0,
        sampler="euler_ancestral",
        seed=MAX_SEED,
        batch_size=2,
        denoise=0.6,
        model="anima-turbo-v1.0",
        model_hash="0123456789",
        dtype="bf16",
        loras=(("turbo", 0.75),),
        extra=(("Guidance", "apg"),),
    )
    text = r.to_json()
    assert json.loads(text)["format"] == "anima-recipe/2"  # groups as JSON objects (v1: A1111 text pairs)
    assert Recipe.from_json(text) == r
    assert Recipe.from_dict(r.to_dict()) == r


def test_from_json_accepts_ints_for_floats_and_missing_defaults() -> None:
    r = Recipe.from_json('{"prompt": "a", "cfg": 5, "shift": 2}')
    assert r == Recipe("a", cfg=5.0, shift=2.0) and isinstance(r.cfg, float)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"prompt": "a", "sampling": "euler"}', "unknown recipe field 'sampling'"),
        ('{"prompt": "a", "steps": "30"}', "'steps' has the wrong type"),
        ('{"prompt": "a", "seed": true}', "'seed' has the wrong type"),
        ('{"prompt": "a", "loras": [["x"]]}', "'loras'"),
        ('{"prompt": "a", "extra": {"k": 1}}', "'extra'"),
        ('{"negative_prompt": "a"}', "'prompt' is missing"),
        ('{"prompt": "a", "format": "anima-recipe/9"}', "unsupported recipe format"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_from_json_rejects(text: str, needle: str) -> None:
    with pytest.raises(AnimaError, match=None) as err:
        Recipe.from_json(text)
    assert needle in str(err.value)


def test_with_replaces_and_rejects_unknown() -> None:
    r = Recipe("a")
    assert r.with_(seed=7).seed == 7 and r.seed == 0
    with pytest.raises(AnimaError, match="unknown recipe field 'sed'"):
        r.with_(sed=7)


def test_size_presets_are_valid_and_near_one_megapixel() -> None:
    assert {"square", "portrait", "landscape", "tall", "wide", "phone", "cinema"} <= set(SIZE_PRESETS)
    for name, (w, h) in SIZE_PRESETS.items():
        assert parse_size(name) == (w, h)
        assert w % 16 == 0 and h % 16 == 0
        assert abs(w * h / 2**20 - 1) < 0.05, name
    with pytest.raises(TypeError):
        SIZE_PRESETS["square"] = (1, 1)  # type: ignore[index]


def test_parse_size() -> None:
    assert parse_size("portrait") == (896, 1152)
    assert parse_size(" Wide ") == (1216, 832)
    assert parse_size("1536x1024") == (1536, 1024)
    assert parse_size("768 X 1344") == (768, 1344)
    with pytest.raises(AnimaError, match="nearest valid width is 1008"):
        parse_size("1000x1000")
    with pytest.raises(AnimaError, match="portrait"):
        parse_size("huge")
