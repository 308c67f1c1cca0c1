"""Grids, prompt matrix and wildcards: planning, validation, contact sheet, exact --from-png reproduction."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, TOKENIZERS
from PIL import Image

from anima.cli import main
from anima.errors import AnimaError
from anima.imageio import read_png_text, read_recipe
from anima.interop.a1111 import setting_pairs
from anima.jobs.contact_sheet import render_sheet
from anima.jobs.grid import GRID_KEY, GridPlan, parse_axis, plan_grid
from anima.jobs.prompt_matrix import plan_matrix
from anima.jobs.wildcards import expand_recipe
from anima.recipe import Recipe

W = TINY / "weights"
MODEL_FLAGS = [
    "--dit", str(W / "anima_tiny_dit.safetensors"),
    "--text-encoder", str(W / "qwen3_tiny_te.safetensors"),
    "--vae", str(W / "wan21_tiny_vae.safetensors"),
    "--tokenizer-dir", str(TOKENIZERS), "--dtype", "fp32", "--no-progress",
]  # fmt: skip
SMALL = ["--size", "32x32", "--steps", "2", "--sampler", "euler", "--seed", "4"]


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_axes_and_cells() -> None:
    base = Recipe("1girl, red hair", seed=1)
    axes = [
        parse_axis("cfg=3, 4"),
        parse_axis("sampler=euler,er_sde"),
        parse_axis('prompt="red hair","blue hair"'),
    ]
    plan = plan_grid(base, axes)
    assert plan.shape == (2, 2, 2) and len(plan.cells) == 8
    assert [c.cfg for c in plan.cells[:2]] == [3.0, 4.0]  # X fastest
    assert [c.sampler for c in plan.cells[:4]] == ["euler", "euler", "er_sde", "er_sde"]
    assert plan.cells[-1].prompt == "1girl, blue hair" and plan.z_labels == (
        "prompt: red hair",
        "prompt: blue hair",
    )
    wf_axis = plan_grid(base, [parse_axis("nag-scale=1,3"), parse_axis("size=32x48,square")])
    assert wf_axis.cells[1].setting("nag_scale") == 3.0
    assert (wf_axis.cells[2].width, wf_axis.cells[2].height) == (1024, 1024)
    assert GridPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("colour=1,2", "unknown grid axis 'colour'; choose from"),
        ("cfg", "NAME=VALUE1,VALUE2"),
        ("cfg=", "no values"),
    ],
)
def test_bad_axes(spec, needle) -> None:
    with pytest.raises(AnimaError, match=needle):
        parse_axis(spec)


def test_bad_values_fail_when_planned() -> None:
    with pytest.raises(AnimaError, match="cannot use value 'x'"):
        plan_grid(Recipe("p"), [parse_axis("steps=2,x")])
    with pytest.raises(AnimaError, match="does not occur"):
        plan_grid(Recipe("p"), [parse_axis("prompt=cat,dog")])
    with pytest.raises(AnimaError, match="repeat"):
        plan_grid(Recipe("p"), [parse_axis("cfg=1"), parse_axis("cfg=2")])


def test_prompt_matrix_cells() -> None:
    plan = plan_matrix(Recipe("1girl|smile|[red|blue] hat|(night:1.2)", seed=3))
    assert len(plan.cells) == 8 and all(c.seed == 3 for c in plan.cells)
    assert (
        plan.cells[0].prompt == "1girl"
        and plan.cells[-1].prompt == "1girl, smile, [red|blue] hat, (night:1.2)"
    )
    assert plan.x_labels[1] == "+smile -[red|blue] hat" and plan.y_labels == ("-(night:1.2)", "+(night:1.2)")
    with pytest.raises(AnimaError, match="separated by"):
        plan_matrix(Recipe("no bars"))


def test_contact_sheet_layout() -> None:
    cells = [np.full((20, 30, 3), v, np.uint8) for v in (10, 60, 110, 160)]
    sheet = render_sheet(cells, ["x: 1", "x: 2"], ["y: a", "y: b"], [])
    assert sheet.ndim == 3 and sheet.shape[1] > 60 and sheet.shape[0] > 40
    assert sheet[-8, -8].tolist() == [160, 160, 160]  # the last cell sits at the bottom right
    assert (sheet[:20] < 255).any() and (sheet[:20, :10] == 255).all()  # a column label, top left empty
    with pytest.raises(ValueError):
        render_sheet(cells[:3], ["a", "b"], ["c", "d"], [])


def test_wildcards(tmp_path) -> None:
    (tmp_path / "hair").mkdir()
    (tmp_path / "hair" / "colour.txt").write_text("# colours\nred\n\nblue __shade__\ngreen\n")
    (tmp_path / "shade.txt").write_text("dark\nlight\n")
    r = Recipe("1girl, __hair/colour__ hair", seed=0)
    picks = {expand_recipe(r.with_(seed=s), tmp_path).prompt for s in range(40)}
    assert picks <= {
        "1girl, red hair",
        "1girl, green hair",
        "1girl, blue dark hair",
        "1girl, blue light hair",
    }
    assert len(picks) == 4
    a, b = expand_recipe(r.with_(seed=5), tmp_path), expand_recipe(r.with_(seed=5), tmp_path)
    assert a == b and a.origin.wildcard_prompt == "1girl, __hair/colour__ hair"
    assert expand_recipe(Recipe("plain"), None) == Recipe("plain")
    with pytest.raises(AnimaError, match="no wildcard file nope.txt.*available: hair/colour, shade"):
        expand_recipe(Recipe("__nope__"), tmp_path)
    with pytest.raises(AnimaError, match="no wildcards folder was given"):  # the CLI adds its flag
        expand_recipe(Recipe("__x__"), None)
    (tmp_path / "loop.txt").write_text("__loop__\n")
    with pytest.raises(AnimaError, match="nest"):
        expand_recipe(Recipe("__loop__"), tmp_path)


def test_cli_grid_sheet_reproduces_exactly(tmp_path, capsys) -> None:
    out = tmp_path / "grid.png"
    grid = ["--grid", "cfg=1,4", "sampler=euler,heun"]
    assert main(["generate", "1girl", *SMALL, *grid, *MODEL_FLAGS, "-o", str(out)]) == 0
    text = read_png_text(out)
    data = json.loads(text[GRID_KEY])
    assert len(data["cells"]) == 4 and data["x_labels"] == ["cfg: 1", "cfg: 4"]
    assert [c["sampler"] for c in data["cells"]] == ["euler", "euler", "heun", "heun"]
    recipe = read_recipe(out)
    pairs = dict(setting_pairs(recipe))
    assert pairs["Grid X"] == "cfg=1,4" and pairs["Grid Y"] == "sampler=euler,heun"
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(_pixels(again), _pixels(out))


def test_cli_prompt_matrix_with_wildcards_reproduces(tmp_path) -> None:
    wild = tmp_path / "wild"
    wild.mkdir()
    (wild / "pose.txt").write_text("sitting\nstanding\nrunning\n")
    out = tmp_path / "m.png"
    flags = ["1girl|__pose__|smile", "--prompt-matrix", "--wildcards-dir", str(wild)]
    assert main(["generate", *flags, *SMALL, *MODEL_FLAGS, "-o", str(out)]) == 0
    cells = json.loads(read_png_text(out)[GRID_KEY])["cells"]
    assert len(cells) == 4 and cells[0]["prompt"] == "1girl"
    assert all("__" not in c["prompt"] for c in cells)  # expanded, the template recorded
    assert cells[1]["origin"]["wildcard_prompt"] == "1girl, __pose__"
    again = tmp_path / "again.png"
    assert (
        main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 0
    )  # no wildcards needed
    assert np.array_equal(_pixels(again), _pixels(out))


def test_cli_wildcard_image_reproduces_without_the_folder(tmp_path) -> None:
    wild = tmp_path / "wild"
    wild.mkdir()
    (wild / "hair.txt").write_text("red\nblue\ngreen\nwhite\n")
    out = tmp_path / "w.png"
    assert (
        main(
            [
                "generate",
                "1girl, __hair__ hair",
                "--wildcards-dir",
                str(wild),
                *SMALL,
                *MODEL_FLAGS,
                "-o",
                str(out),
            ]
        )
        == 0
    )
    recipe = read_recipe(out)
    assert "__" not in recipe.prompt and recipe.origin.wildcard_prompt == "1girl, __hair__ hair"
    (wild / "hair.txt").unlink()
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), *MODEL_FLAGS, "-o", str(again)]) == 0
    assert np.array_equal(_pixels(again), _pixels(out))


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--grid", "colour=1,2"], "unknown grid axis"),
        (["--grid", "cfg=1,2", "--batch-size", "2"], "one image per cell"),
        (["--grid", "steps=2,0"], "steps"),
        (["--grid", "a=1", "b=2", "c=3", "d=4"], "unknown grid axis 'a'"),
        (["--grid", "cfg=1", "--prompt-matrix"], "either --grid or --prompt-matrix"),
    ],
)
def test_cli_grid_errors_write_nothing(tmp_path, capsys, flags, needle) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", "p", *flags, *MODEL_FLAGS, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()
