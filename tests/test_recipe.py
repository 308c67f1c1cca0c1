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
        ({"width": 1004}, "nearest valid width is 1008"),  # multiples of 8, as ComfyUI takes them
        ({"height": 1027}, "nearest valid height is 1024"),
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
    # 1004 sits halfway between 1000 and 1008: ties go up.
    got = [nearest_valid_size(v) for v in (1000, 1003, 1004, 1007, 1012, 1, 99999)]
    assert got == [1000, 1000, 1008, 1008, 1016, 16, 8192]


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
    assert parse_size("1080x1920") == (1080, 1920)  # multiples of 8 (the DiT pads and crops back)
    with pytest.raises(AnimaError, match="nearest valid width is 1008"):
        parse_size("1005x1000")
    with pytest.raises(AnimaError, match="portrait"):
        parse_size("huge")


# --------------------------------------------------------------------- typed settings (issue 12)
def test_settings_are_typed_groups_validated_where_made() -> None:
    from anima.recipe import SETTINGS, Hires, Nag, Perf

    r = Recipe.make("a", hires_scale=1.5, hires_steps=12, nag_scale=3, step_cache=0.1, guidance="apg")
    assert (
        r.hires == Hires(scale=1.5, steps=12) and r.nag == Nag(scale=3.0) and r.perf == Perf(step_cache=0.1)
    )
    assert r.guidance.kind == "apg" and isinstance(r.nag.scale, float)
    assert r.with_(hires_denoise=0.4).hires.denoise == 0.4 and r.hires.denoise == 0.5  # frozen
    assert {r.setting(k) for k in ("hires_scale", "nag_scale")} == {1.5, 3.0}
    assert hash(r) == hash(Recipe.make("a", hires_scale=1.5, hires_steps=12, nag_scale=3.0, step_cache=0.1,
                                       guidance="apg"))  # fmt: skip
    for flat, (group, field) in SETTINGS.items():  # every flat name addresses a real group field
        assert hasattr(getattr(Recipe("x"), group), field), flat
    for bad, needle in [
        ({"hires_scale": 9}, "hires scale must be in 1..8"),
        ({"hires_denoise": 0}, "hires denoise must be in (0, 1]"),
        ({"guidance": "magic"}, "unknown guidance 'magic'"),
        ({"variation_strength": 0.5}, "needs a variation seed"),
        ({"step_cache": 1.5}, "step cache threshold must be in (0, 1)"),
        ({"weights": "nf4"}, "unknown weights format 'nf4'"),
        ({"mask": "/m.png"}, "a mask needs an init image"),
        ({"inpaint_area": "half"}, "unknown inpaint area 'half'"),
    ]:
        with pytest.raises(AnimaError) as err:
            Recipe.make("a", **bad)
        assert needle in str(err.value) and "\n" not in str(err.value), bad
        assert err.value.setting in SETTINGS  # the front ends phrase it (a flag, a field)


def test_json_round_trip_with_groups_writes_only_what_differs() -> None:
    from anima.recipe import GridAxis

    r = Recipe.make(
        "a", hires_scale=2, hires_sampler="euler", variation_seed=3, variation_strength=0.2,
        init_image="/x.png", init_image_hash="abc", mask_blur=0, weights="int8", wildcard_prompt="__a__",
        grid=(GridAxis("cfg", ("3", "4")),),
    )  # fmt: skip
    data = r.to_dict()
    assert data["hires"] == {"scale": 2.0, "sampler": "euler"} and data["perf"] == {"weights": "int8"}
    assert "nag" not in data and "guidance" not in data  # defaults are not written
    assert data["grid"] == [{"name": "cfg", "values": ["3", "4"]}]
    assert Recipe.from_json(r.to_json()) == r
    for bad, needle in [
        ({"hires": {"scal": 2}}, "unknown hires setting 'scal'"),
        ({"hires": {"scale": 99}}, "recipe hires settings: hires scale must be in"),
        ({"hires": 2}, "'hires' has the wrong type"),
        ({"grid": [{"name": "cfg"}]}, "'grid' needs"),
    ]:
        with pytest.raises(AnimaError, match=None) as err:
            Recipe.from_dict({"prompt": "a", **bad})
        assert needle in str(err.value), bad


def test_availability_of_samplers_is_checked_when_run_not_when_read() -> None:
    """A recipe may describe an image made elsewhere (A1111's DPM2): it can be read and shown, and
    says what is missing when it is run."""
    r = Recipe.make("x", sampler="dpm_2", hires_scheduler="kl_optimal")
    with pytest.raises(AnimaError, match="unknown sampler 'dpm_2'"):
        r.validate()
    assert Recipe("x").validate() is not None
    with pytest.raises(AnimaError, match="unknown scheduler 'karras'"):
        Recipe("x", scheduler="karras").validate(schedulers=("simple",))


def test_legacy_v1_json_reads_its_text_pairs_as_typed_settings() -> None:
    from anima.interop.legacy import recipe_from_data

    old = {
        "format": "anima-recipe/1", "prompt": "a", "steps": 8, "loras": [["s", 0.5]],
        "extra": {"Hires upscale": "1.5", "NAG scale": "2", "Step cache": "0.1", "Grid X": "cfg=3,5",
                  "FP16 accumulation": "on", "ADetailer model": "face"},
    }  # fmt: skip
    r = recipe_from_data(old)
    assert (r.hires.scale, r.nag.scale, r.perf.step_cache, r.perf.fp16_accumulation) == (1.5, 2.0, 0.1, True)
    assert r.grid[0].spec() == "cfg=3,5" and r.extra == (("ADetailer model", "face"),)
    assert r.loras == (("s", 0.5),) and r.steps == 8
    with pytest.raises(AnimaError, match="cannot read Hires upscale 'big'"):
        recipe_from_data({**old, "extra": {"Hires upscale": "big"}})


def test_a1111_infotext_labels_round_trip_every_setting() -> None:
    from anima.interop.a1111 import infotext, parse_infotext, recipe_from_infotext, setting_pairs

    r = Recipe.make(
        "a", guidance="rescale-cfg", cfg_rescale=0.5, nag_scale=2, nag_tau=3, variation_seed=4,
        variation_strength=0.3, hires_scale=1.5, hires_upscaler="lanczos", hires_steps=3, hires_denoise=0.4,
        hires_sampler="euler", hires_scheduler="karras", tiled_vae="on", init_image="/i.png",
        init_image_hash="ab", mask="/m.png", mask_hash="cd", mask_blur=2, mask_grow=-1,
        inpaint_area="only masked", inpaint_padding=8, weights="fp8", step_cache=0.2, fp16_accumulation=True,
        wildcard_prompt="__x__", prompt_matrix=True, training_step=5,
    )  # fmt: skip
    assert len(setting_pairs(r)) == 27  # every flat setting here differs from its default
    assert recipe_from_infotext(parse_infotext(infotext(r))) == r
