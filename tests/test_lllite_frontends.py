"""ControlNet-LLLite from every front end: the CLI group (one and two units, --from-png), the A1111
API's ControlNet units through the real webuiapi client (same pixels as the CLI), the native API, and
the bad inputs of issue 13 as one-line errors that lose no queued server job."""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
import torch
import webuiapi
from conftest import SHARED, TINY_MODEL_ARGS
from PIL import Image
from server_support import LiveServer, tiny_service

from anima.cli import main
from anima.imageio import read_png_text, read_recipe
from anima.weights.safetensors import load_mmap, save

LLLITE = SHARED / "fixtures" / "anima-lllite"
ASPP = LLLITE / "lllite" / "anima_lllite_tiny_aspp.safetensors"
PLAIN = LLLITE / "lllite" / "anima_lllite_tiny_plain.safetensors"
INPAINT = LLLITE / "lllite" / "anima_lllite_tiny_inpaint.safetensors"
CONTROL = LLLITE / "inputs" / "control_128.png"
WIDE = LLLITE / "inputs" / "control_192x128.png"
RUN = ["--size", "64x64", "--steps", "3", "--seed", "11", "--sampler", "euler_ancestral", "--dtype", "fp32",
       "--negative-prompt", "", "--no-progress"]  # fmt: skip


def generate(tmp_path, name: str, *flags: str) -> np.ndarray:
    out = tmp_path / f"{name}.png"
    assert main(["generate", "a girl", *TINY_MODEL_ARGS, *RUN, *flags, "-o", str(out)]) == 0
    return np.asarray(Image.open(out).convert("RGB"))


def error_of(capsys, *argv: str) -> str:
    capsys.readouterr()  # what earlier runs printed
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anima: error:") and "\n" not in err, err  # one line
    return err


def test_cli_one_and_two_units(tmp_path) -> None:
    plain = generate(tmp_path, "plain")
    one = generate(tmp_path, "one", "--control-model", str(ASPP), "--control", str(CONTROL),
                   "--control-strength", "0.8", "--control-end", "0.9")  # fmt: skip
    two = generate(tmp_path, "two", "--control-model", str(ASPP), "--control", str(CONTROL),
                   "--control-strength", "0.8", "--control-end", "0.9",
                   "--control-model", str(PLAIN), "--control", str(WIDE),
                   "--control-start", "0.2")  # fmt: skip
    assert np.abs(one.astype(int) - plain).max() > 20 and np.abs(two.astype(int) - one).max() > 20
    recipe = read_recipe(tmp_path / "two.png")
    a, b = recipe.controls
    assert (a.strength, a.start, a.end, b.start) == (0.8, 0.0, 0.9, 0.2)
    assert a.model_hash == "8e4e921393" and a.image == str(CONTROL.resolve()) and len(a.image_hash) == 16
    params = read_png_text(tmp_path / "two.png")["parameters"]
    assert 'ControlNet 0: "Module: none, Model: anima_lllite_tiny_aspp [8e4e921393], Weight: 0.8' in params
    assert "ControlNet 1:" in params and "Control 1 image hash:" in params


def test_from_png_reruns_and_needs_its_control_image(tmp_path, capsys) -> None:
    image = tmp_path / "control.png"
    shutil.copy(CONTROL, image)
    first = generate(tmp_path, "first", "--control-model", str(ASPP), "--control", str(image))
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(tmp_path / "first.png"), *TINY_MODEL_ARGS, "--no-progress",
                 "-o", str(again)]) == 0  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(again).convert("RGB")), first)
    image.unlink()
    err = error_of(capsys, "generate", "--from-png", str(tmp_path / "first.png"), *TINY_MODEL_ARGS, "-o",
                   str(tmp_path / "x.png"))  # fmt: skip
    assert "control 0's image" in err and "is missing; give it again" in err and "(--control)" in err
    Image.open(CONTROL).rotate(90).save(image)  # a different file at the recorded path
    err = error_of(capsys, "generate", "--from-png", str(tmp_path / "first.png"), *TINY_MODEL_ARGS, "-o",
                   str(tmp_path / "x.png"))  # fmt: skip
    assert "has changed since" in err
    # Given again: the flags replace the recorded units.
    assert main(["generate", "--from-png", str(tmp_path / "first.png"), *TINY_MODEL_ARGS, "--no-progress",
                 "--control-model", str(ASPP), "--control", str(CONTROL), "-o", str(again)]) == 0  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(again).convert("RGB")), first)


def _patch_variant(tmp_path, name: str, *, metadata=None, rename=None, legacy=False):
    tensors = {k: v.clone() for k, v in load_mmap(ASPP).items()}
    if rename:
        tensors = {k.replace(*rename): v for k, v in tensors.items()}
    if legacy:
        tensors = {"lllite_modules.0.down.weight": torch.zeros(2, 2), **tensors}
    path = tmp_path / f"{name}.safetensors"
    save(tensors, path, metadata={"lllite.version": "2", **(metadata or {})})
    return path


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--control", "x.png"], "--control comes before any --control-model"),
        (["--control-model", "ASPP", "--control", "CONTROL", "--control-strength", "11"],
         "control strength must be in -10..10, got 11.0 (--control-strength)"),
        (["--control-model", "ASPP", "--control", "CONTROL", "--control-start", "0.7",
          "--control-end", "0.5"],
         "control start 0.7 is after its end 0.5"),
        (["--control-model", "ASPP", "--control", "CONTROL", "--control-mask", "CONTROL"],
         "takes a 3-channel image, no mask; drop the mask (--control-mask)"),
        (["--control-model", "INPAINT", "--control", "CONTROL", "--control-mask", "WIDE"],
         "control 0's mask is 192x128 but its image is 128x128; they must be the same size"),
        (["--control-model", "VERSION3", "--control", "CONTROL"], "LLLite version '3' is not supported"),
        (["--control-model", "BLOCKS3", "--control", "CONTROL"],
         "this LLLite patch was made for a 3-block DiT; the model has 2 blocks"),
        (["--control-model", "LEGACY", "--control", "CONTROL"], "a legacy ControlNet-LLLite file"),
        (["--control-model", "nowhere", "--control", "CONTROL"], "control model 'nowhere' not found"),
        (["--control-model", "ASPP"], "needs a control image: --control IMAGE"),
    ],
)  # fmt: skip
def test_cli_bad_inputs_are_one_line(tmp_path, capsys, isolated_home, flags, words) -> None:
    files = {
        "ASPP": ASPP, "INPAINT": INPAINT, "CONTROL": CONTROL, "WIDE": WIDE,
        "VERSION3": _patch_variant(tmp_path, "v3", metadata={"lllite.version": "3"}),
        "BLOCKS3": _patch_variant(tmp_path, "deep", rename=("blocks_1_", "blocks_2_")),
        "LEGACY": _patch_variant(tmp_path, "legacy", legacy=True),
    }  # fmt: skip
    argv = [str(files.get(f, f)) for f in flags]
    out = tmp_path / "out.png"
    err = error_of(capsys, "generate", "a girl", *TINY_MODEL_ARGS, *RUN, *argv, "-o", str(out))
    assert words in err
    assert not out.exists()


# --------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def patches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model_patches")
    for p in (ASPP, INPAINT):
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, patches):
    from anima.server.app import create_app

    service = tiny_service()
    service = type(service)(list(service._models.values()), options=service._options, patch_dirs=[patches])
    with LiveServer(create_app(service, data_dir=tmp_path_factory.mktemp("srv"))) as srv:
        yield srv


def test_a1111_units_through_webuiapi_match_the_cli(server, tmp_path) -> None:
    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3)
    assert "anima_lllite_tiny_aspp" in api.controlnet_model_list()
    unit = webuiapi.ControlNetUnit(image=Image.open(CONTROL), model="anima_lllite_tiny_aspp [8e4e921393]",
                                   weight=0.8, guidance_end=0.9, resize_mode="Crop and Resize")  # fmt: skip
    # A fresh alwayson_scripts: webuiapi writes the units into its (shared, mutable) default dict otherwise,
    # and every later call of the process would send them again.
    result = api.txt2img(prompt="a girl", negative_prompt="", seed=11, cfg_scale=4.0, width=64, height=64,
                         steps=3, controlnet_units=[unit], alwayson_scripts={})  # fmt: skip
    assert result.info["notes"] == []
    cli = generate(tmp_path, "cli", "--control-model", str(ASPP), "--control", str(CONTROL),
                   "--control-strength", "0.8", "--control-end", "0.9")  # fmt: skip
    assert np.array_equal(np.asarray(result.image.convert("RGB")), cli)
    assert 'ControlNet 0: "Module: none, Model: anima_lllite_tiny_aspp' in result.image.info["parameters"]


def _b64(path) -> str:
    buf = io.BytesIO()
    Image.open(path).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_native_api_controls_and_bad_units_lose_no_queued_job(tmp_path, patches) -> None:
    from anima.server.app import create_app

    service = tiny_service()
    service = type(service)(list(service._models.values()), options=service._options, patch_dirs=[patches])
    app = create_app(service, data_dir=tmp_path / "srv", start_worker=False)  # jobs stay queued
    recipe = {"prompt": "a girl", "width": 64, "height": 64, "steps": 2, "seed": 1}
    good = {"model": "anima_lllite_tiny_aspp", "image": _b64(CONTROL), "strength": 0.5, "end": 0.8}
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        r = client.post("/api/jobs", json={"recipe": recipe, "controls": [good]})
        assert r.status_code == 202, r.text
        unit = r.json()["recipe"]["controls"][0]
        assert unit["strength"] == 0.5 and unit["image_hash"]
        assert unit["image"].endswith("-control0-image.png")
        bad = [
            {**good, "model": "nowhere"},
            {**good, "mask": _b64(CONTROL)},  # a mask for a 3-channel patch
            {**good, "model": "anima_lllite_tiny_inpaint", "mask": _b64(WIDE)},  # wrong-size mask
            {**good, "strength": 11},
            {**good, "start": 0.9, "end": 0.1},
        ]
        for unit in bad:
            r = client.post("/api/jobs", json={"recipe": recipe, "controls": [unit]})
            detail = r.json()["detail"]  # ours: one line; pydantic's range checks (422): a list of errors
            assert 400 <= r.status_code < 500 and (isinstance(detail, list) or "\n" not in detail), r.text
        queued = client.get("/api/jobs", params={"status": "queued"}).json()
        assert queued["total"] == 1
