"""Writing recipes as ComfyUI graphs: done-when 3 (what anima writes reads back to the same recipe,
and every node it writes has the type and widget layout ComfyUI declares at the fixtures' commit,
per the node_defs.json list kept in the repo) and the PNG side (every PNG carries the chunks;
anima's own recipe still wins on re-read)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from comfy_support import FIX
from conftest import TINY_MODEL_ARGS, isolate_home
from PIL import Image

from anima.cli import main
from anima.imageio import comfyui_chunks, read_png_text, read_recipe, save_png
from anima.interop.comfyui.graph import Link, parse_api
from anima.interop.comfyui.node_defs import node_def, provenance
from anima.interop.comfyui.plan import plan_graph
from anima.interop.comfyui.read import has_graph
from anima.interop.comfyui.ui import _widget_inputs, ui_to_api
from anima.interop.comfyui.write import GraphFiles, GraphUnavailable, api_graph, ui_graph
from anima.recipe import Recipe

BASE = {"model": "anima_tiny_dit", "width": 128, "height": 96, "steps": 6, "seed": 11, "sampler": "euler"}
RECIPES = {
    "txt2img": Recipe.make("1girl, (smile:1.2)", **BASE),
    "batch, shift, sgm": Recipe.make(
        "a", **BASE | {"batch_size": 2, "shift": 2.5, "scheduler": "sgm_uniform"}
    ),
    "loras, zeroed negative, cfg-zero-star": Recipe.make(
        "b",
        **BASE,
        loras=[("k.safetensors", 0.8), ("sub/p.safetensors", 1.0)],
        lora_keys="comfyui",
        clip_loras=[("k.safetensors", 0.25)],
        zero_negative=True,
        guidance="cfg-zero-star",
    ),
    "advanced": Recipe.make(
        "c", **BASE | {"steps": 8}, add_noise=False, start_step=2, end_step=6, leftover_noise=True
    ),
    "hires": Recipe.make("d", **BASE, hires_scale=1.5, hires_upscaler="latent-bilinear", hires_steps=3),
    "img2img": Recipe.make(
        "e",
        **BASE | {"width": 200, "height": 152},
        denoise=0.6,
        init_image="/in/x.png",
        init_resize="bicubic 200x154",
    ),
    "noise mask, tiled": Recipe.make(
        "f",
        **BASE,
        denoise=0.7,
        init_image="/in/x.png",
        init_resize="none",
        mask="/in/x.png",
        mask_channel="alpha",
        noise_mask=True,
        mask_blur=0,
        tiled_vae="on",
    ),
}


# Combos listing files: node_defs holds the files that were there when it was taken, not a layout.
FILE_COMBOS = {"unet_name", "clip_name", "vae_name", "lora_name", "ckpt_name", "image"}


def _read_back(graph_api, picture: tuple[int, int] = (300, 231)) -> Recipe:
    (job,) = plan_graph(graph_api, lambda name: picture, lambda name: f"/in/{name}").jobs
    return job.recipe


@pytest.mark.parametrize("name", RECIPES)
def test_written_graphs_read_back_to_the_recipe(name: str) -> None:
    recipe = RECIPES[name]
    # The input picture: as big as the recipe when it was used as it is, else larger (resized).
    picture = (recipe.width, recipe.height) if recipe.comfy.init_resize == "none" else (300, 231)
    assert _read_back(parse_api(api_graph(recipe)), picture) == recipe
    assert _read_back(ui_to_api(ui_graph(recipe)), picture) == recipe


@pytest.mark.parametrize("name", RECIPES)
def test_written_nodes_have_comfyui_layouts(name: str) -> None:
    api, ui = api_graph(RECIPES[name]), ui_graph(RECIPES[name])
    assert provenance()["comfyui_commit"] == "4f874c5e3a2fafb9938273c5f3fc47d2da017667"
    for node in api.values():
        spec = node_def(node["class_type"])
        assert spec is not None, node["class_type"]
        declared = {i.name: i for i in spec.inputs}
        assert set(node["inputs"]) <= set(declared), node["class_type"]
        required = {i.name for i in spec.inputs if not i.spec.get("optional")}
        assert required <= set(node["inputs"]), (node["class_type"], required - set(node["inputs"]))
        for key, value in node["inputs"].items():
            d = declared[key]
            if d.type in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"):
                kind = {"INT": int, "FLOAT": float, "BOOLEAN": bool, "STRING": str, "COMBO": str}[d.type]
                assert type(value) is kind, (node["class_type"], key, value)
                if d.type == "COMBO" and key not in FILE_COMBOS:
                    assert value in d.spec["options"], (node["class_type"], key, value)
                if "min" in d.spec and "max" in d.spec:
                    assert d.spec["min"] <= value <= d.spec["max"], (node["class_type"], key)
            else:  # a socket: a link to an output of the declared type
                src = api[value[0]]
                assert node_def(src["class_type"]).outputs[value[1]] == d.type, (node["class_type"], key)
    for n in ui["nodes"]:
        spec = node_def(n["type"])
        literal = {k: v for k, v in api[str(n["id"])]["inputs"].items() if not isinstance(v, list)}
        assert _widget_inputs(spec.inputs, n["widgets_values"], n["type"]) == literal, n["type"]
        assert [i["name"] for i in n["inputs"]] == [i.name for i in spec.inputs if i.name in
                                                     {k for k, v in api[str(n["id"])]["inputs"].items()
                                                      if isinstance(v, list)}]  # fmt: skip
        assert [o["type"] for o in n["outputs"]] == list(spec.outputs)


@pytest.mark.parametrize(
    "settings, why",
    [
        ({"nag_scale": 3.0}, "NAG"),
        ({"variation_seed": 5, "variation_strength": 0.3}, "variation seeds"),
        ({"guidance": "apg"}, "apg guidance"),
        ({"guidance": "cfg-zero-star", "cfg_zero_init_steps": 2}, "CFG-Zero* zero-init steps"),
        ({"hires_scale": 1.5}, "the latent-bislerp hires upscaler"),
        ({"hires_scale": 3.0, "hires_upscaler": "latent-bilinear"}, "hires fix in more than one pass"),
        ({"init_image": "/in/x.png", "mask": "/in/m.png"}, "anima's inpainting"),
        ({"init_image": "/in/x.png", "denoise": 0.5}, "anima's init-image resizing"),
        ({"prompt": "a [cat:dog:0.5]"}, "prompt editing"),
        ({"step_cache": 0.1}, "the step cache"),
    ],
)
def test_recipes_without_a_core_node_graph_say_so(settings: dict, why: str) -> None:
    recipe = Recipe.make(settings.pop("prompt", "x"), **BASE, **settings)
    with pytest.raises(GraphUnavailable) as e:
        api_graph(recipe)
    assert why in str(e.value) and str(e.value).startswith("no ComfyUI graph: ")
    chunks, note = comfyui_chunks(recipe)
    assert chunks == {} and why in note


def test_graph_names_the_model_files() -> None:
    files = GraphFiles("anima/anima-base-v1.0.safetensors", "qwen_3_06b_base.safetensors", "vae.safetensors")
    api = api_graph(RECIPES["txt2img"], files)
    loaders = {n["class_type"]: n["inputs"] for n in api.values()}
    assert loaders["UNETLoader"]["unet_name"] == files.unet and loaders["VAELoader"]["vae_name"] == files.vae
    assert _read_back(parse_api(api)).model == "anima-base-v1.0"


def test_png_carries_the_graph_and_keeps_its_recipe_first(tmp_path: Path) -> None:
    recipe = RECIPES["loras, zeroed negative, cfg-zero-star"]
    path = save_png(tmp_path / "x.png", np.zeros((96, 128, 3), np.uint8), recipe)
    text = read_png_text(path)
    assert {"parameters", "anima_recipe", "prompt", "workflow"} <= set(text)
    assert not has_graph(text) and read_recipe(path) == recipe
    graph = parse_api(__import__("json").loads(text["prompt"]))
    assert graph.node("1").inputs["unet_name"] == "anima_tiny_dit.safetensors"
    assert any(isinstance(v, Link) for n in graph.nodes.values() for v in n.inputs.values())
    plain = save_png(tmp_path / "n.png", np.zeros((8, 8, 3), np.uint8), Recipe.make("x", nag_scale=2.0))
    assert "prompt" not in read_png_text(plain)


@pytest.mark.slow  # four generations; the round trips above check the same graphs without a model
def test_exported_workflow_makes_the_same_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_home(tmp_path, monkeypatch)
    args = ["(red:1.3) flowers", *TINY_MODEL_ARGS, "--size", "64x64", "--steps", "2", "--seed", "4"]
    args += ["--sampler", "euler", "--dtype", "fp32", "--no-progress", "--shift", "2.5"]
    assert main(["generate", *args, "-o", str(tmp_path / "a.png")]) == 0
    assert main(["generate", *args, "--export-workflow", str(tmp_path / "w.json")]) == 0
    assert main(["generate", *args, "--export-workflow", str(tmp_path / "w.api.json")]) == 0
    assert not (tmp_path / "w.png").exists()
    weights = Path(TINY_MODEL_ARGS[1]).parent
    run = [
        "--models-dir",
        str(weights),
        "--tokenizer-dir",
        TINY_MODEL_ARGS[-1],
        "--dtype",
        "fp32",
        "--no-progress",
    ]
    for name in ("w.json", "w.api.json"):
        out = tmp_path / f"{name}.png"
        assert main(["generate", "--workflow", str(tmp_path / name), *run, "-o", str(out)]) == 0
        assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "a.png")))
        assert read_recipe(out).with_(model_hash="") == read_recipe(tmp_path / "a.png").with_(model_hash="")


def test_anima_loras_are_written_only_when_comfyui_applies_all_their_keys(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from anima.lora.comfy_keys import comfyui_applies_all

    recipe = Recipe.make("x", **BASE, loras=[("k.safetensors", 0.5)])  # anima's every-format rule
    with pytest.raises(GraphUnavailable, match="a LoRA whose keys ComfyUI's loader would not all apply"):
        api_graph(recipe)
    written = api_graph(recipe, lora_fits=lambda name: True)
    assert [
        n["inputs"]["lora_name"] for n in written.values() if n["class_type"] == "LoraLoaderModelOnly"
    ] == ["k.safetensors"]
    assert comfyui_applies_all(FIX / "models" / "loras" / "anima_tiny_lora_kohya.safetensors")
    bare = tmp_path / "bare.safetensors"
    save_file({"blocks.0.mlp.layer1.lora_A.weight": torch.zeros(4, 256),
               "blocks.0.mlp.layer1.lora_B.weight": torch.zeros(1024, 4)}, str(bare))  # fmt: skip
    assert not comfyui_applies_all(bare)
