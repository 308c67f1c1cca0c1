"""Planning ComfyUI graphs into recipes (no model): the node semantics the fixtures record.

Done-when 1's mapping half (each case's recipe says what ComfyUI ran), done-when 2's reading half
(the official templates from the installed comfyui-workflow-templates-json package resolve) and
done-when 4 (nodes anima cannot reproduce are one-line errors that say why).
"""

from __future__ import annotations

import copy
import json
from importlib.resources import files

import pytest
from comfy_support import BY_ID, CASES, FIX, LLLITE_CASES

from anima.errors import AnimaError
from anima.interop.comfyui.graph import parse_api
from anima.interop.comfyui.plan import plan_graph
from anima.interop.comfyui.read import load_graph
from anima.recipe.image_ops import parse_ops

TEMPLATES = files("comfyui_workflow_templates_json") / "templates"
SIZES = {
    "wf_init_140x108.png": (140, 108),
    "wf_control_128.png": (128, 128),
    "wf_inpaint_rgba_128.png": (128, 128),
}


def _plan(data, sizes=SIZES):
    return plan_graph(load_graph(data), lambda name: sizes[name], lambda name: f"/input/{name}")


def _graph(case_id: str) -> dict:
    return json.loads((FIX / case_id / "graph.json").read_text())


PLAIN = [c for c in CASES if c["id"] not in LLLITE_CASES]


@pytest.mark.parametrize("case", PLAIN, ids=[c["id"] for c in PLAIN])
def test_recipe_is_what_comfyui_ran(case: dict) -> None:
    p = case["parameters"]
    (job,) = _plan(_graph(case["id"])).jobs
    r = job.recipe
    assert job.output == "46" and job.files.unet == "anima_tiny_dit.safetensors"
    assert (r.prompt, r.negative_prompt) == (p["positive"], p["negative"])
    assert (r.width, r.height, r.batch_size) == (*p["image_size_wxh"], p["batch"])
    assert (r.steps, r.cfg, r.sampler, r.scheduler, r.seed) == (
        p["steps"],
        p["cfg"],
        p["sampler"],
        p["scheduler"],
        p["seed"],
    )
    nodes = {n["class_type"]: n["inputs"] for n in p["other_nodes"]}
    assert r.shift == nodes.get("ModelSamplingAuraFlow", {}).get("shift", 3.0)
    chain = [
        (n["inputs"]["lora_name"], n["inputs"]["strength_model"])
        for n in p["other_nodes"]
        if n["class_type"] == "LoraLoaderModelOnly" and n["id"] not in case["nodes_not_executed"]
    ]
    assert r.loras == tuple(chain)
    assert r.comfy.lora_keys == ("comfyui" if chain else "all")
    if p["sampler_node"] == "KSamplerAdvanced":
        a = r.advanced
        assert (a.add_noise, a.start_step, a.end_step, a.leftover_noise) == (
            p["add_noise"] == "enable",
            p["start_at_step"],
            p["end_at_step"],
            p["return_with_leftover_noise"] == "enable",
        )
    else:
        assert r.denoise == p["denoise"] and not r.advanced.on
    if "LoadImage" in nodes:  # img2img: the picture as VAEEncode takes it, crop to 8 only
        assert job.init_image == nodes["LoadImage"]["image"] and r.comfy.init_resize == "none"
        assert r.sources.init_image == f"/input/{job.init_image}"


def test_switch_runs_only_the_chosen_branch() -> None:
    # wf_a2: turbo off, so LoRA loader 90:83 is never run; make it something anima cannot run.
    data = _graph("wf_a2_anima_base_template_subgraph")
    data["90:83"]["class_type"] = "SomeCustomLoraNode"
    assert _plan(data).jobs[0].recipe.loras == ()
    turbo = _graph("wf_a3_anima_base_template_turbo")
    turbo["90:83"]["class_type"] = "SomeCustomLoraNode"
    with pytest.raises(AnimaError, match=r"^node 90:83 \(SomeCustomLoraNode\) is not a node anima supports"):
        _plan(turbo)


def test_resolution_selector() -> None:
    # comfy_extras/nodes_resolution.py: round(w_r * sqrt(MP * 1024^2 / (w_r h_r)) / multiple) * multiple
    for ratio, mp, multiple, size in [
        ("1:1 (Square)", 0.1, 16, (320, 320)),
        ("3:2 (Photo)", 0.1, 16, (400, 272)),
        ("16:9 (Widescreen)", 1.0, 8, (1368, 768)),
    ]:
        data = _graph("wf_a2_anima_base_template_subgraph")
        data["91"]["inputs"] = {"aspect_ratio": ratio, "megapixels": mp, "multiple": multiple}
        r = _plan(data).jobs[0].recipe
        assert (r.width, r.height) == size


def _img2img(*scale_nodes: dict) -> dict:
    """wf_e with nodes put between its LoadImage (90) and VAEEncode (93)."""
    data = _graph("wf_e_img2img_denoise_055")
    source = ["90", 0]
    for i, node in enumerate(scale_nodes):
        node = copy.deepcopy(node)
        key = next(k for k in ("image", "input") if k in node["inputs"])
        node["inputs"][key] = source
        data[f"5{i}"] = node
        source = [f"5{i}", 0]
    data["93"]["inputs"]["pixels"] = source
    return data


@pytest.mark.parametrize(
    "node, prepared, size",
    [
        (
            {
                "class_type": "ImageScale",
                "inputs": {
                    "upscale_method": "bicubic",
                    "width": 200,
                    "height": 0,
                    "crop": "disabled",
                    "image": None,
                },
            },
            "bicubic 200x154",
            (200, 152),
        ),  # round(108 * 200 / 140)
        (
            {
                "class_type": "ImageScale",
                "inputs": {
                    "upscale_method": "bilinear",
                    "width": 128,
                    "height": 128,
                    "crop": "center",
                    "image": None,
                },
            },
            "bilinear 128x128 center",
            (128, 128),
        ),
        (
            {
                "class_type": "ImageScaleBy",
                "inputs": {"upscale_method": "lanczos", "scale_by": 0.5, "image": None},
            },
            "lanczos 70x54",
            (64, 48),
        ),
        (
            {
                "class_type": "ResizeImageMaskNode",
                "inputs": {
                    "resize_type": "scale total pixels",
                    "resize_type.megapixels": 0.02,
                    "scale_method": "area",
                    "input": None,
                },
            },
            "area 165x127",
            (160, 120),
        ),
        (
            {
                "class_type": "ResizeImageMaskNode",
                "inputs": {
                    "resize_type": "scale longer dimension",
                    "resize_type.longer_size": 100,
                    "scale_method": "bilinear",
                    "input": None,
                },
            },
            "bilinear 100x77",
            (96, 72),
        ),
        (
            {
                "class_type": "ResizeImageMaskNode",
                "inputs": {
                    "resize_type": "scale to multiple",
                    "resize_type.multiple": 32,
                    "scale_method": "nearest-exact",
                    "input": None,
                },
            },
            "",
            (128, 96),
        ),
    ],
)
def test_image_resizes_are_recorded(node: dict, prepared: str, size: tuple[int, int]) -> None:
    (job,) = _plan(_img2img(node)).jobs
    r = job.recipe
    assert (r.width, r.height) == size
    if node["inputs"].get("resize_type") == "scale to multiple":
        # cover 128x96 scaling by 128/140: height ceil(108 * 128 / 140) = 99, then the centre 96 rows
        assert r.comfy.init_resize == "nearest-exact 128x99; crop 0,1 128x96"
    else:
        assert r.comfy.init_resize == prepared
        assert parse_ops(r.comfy.init_resize)[0].text() == prepared


def _hires_graph(method: str = "nearest-exact", width: int = 192, seed: int = 424242) -> dict:
    data = _graph("wf_a_anima_base_flat")
    data["100"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["76", 0],
            "upscale_method": method,
            "width": width,
            "height": 192,
            "crop": "disabled",
        },
    }
    data["101"] = copy.deepcopy(data["76"])
    data["101"]["inputs"] |= {"latent_image": ["100", 0], "denoise": 0.5, "steps": 4, "seed": seed}
    data["73"]["inputs"]["samples"] = ["101", 0]
    return data


def test_sampler_upscale_sampler_is_a_hires_fix() -> None:
    r = _plan(_hires_graph()).jobs[0].recipe
    h = r.hires
    assert (h.scale, h.upscaler, h.steps, h.denoise) == (1.5, "latent-nearest-exact", 4, 0.5)
    assert (r.width, r.height, r.steps) == (128, 128, 6)


@pytest.mark.parametrize(
    "graph, why",
    [
        (_hires_graph(method="bislerp"), "the upscale must be nearest-exact or bilinear"),
        (_hires_graph(seed=1), "both passes must share model, prompts, seed and CFG"),
        (_hires_graph(width=200), "no hires scale makes anima's passes go 128x128 -> 200x192"),
    ],
)
def test_two_pass_chains_anima_does_not_run_say_why(graph: dict, why: str) -> None:
    with pytest.raises(
        AnimaError, match=r"^node 101 \(KSampler\): this two-pass chain is not one anima runs"
    ) as e:
        _plan(graph)
    assert why in str(e.value)


def _with_model_node(class_type: str, **inputs) -> dict:
    data = _graph("wf_a_anima_base_flat")
    data["100"] = {"class_type": class_type, "inputs": {"model": ["78", 0], **inputs}}
    data["76"]["inputs"]["model"] = ["100", 0]
    return data


def test_cfg_zero_star_maps_to_anima_guidance() -> None:
    r = _plan(_with_model_node("CFGZeroStar")).jobs[0].recipe
    assert r.guidance.kind == "cfg-zero-star" and r.guidance.zero_init_steps == 0


@pytest.mark.parametrize(
    "class_type, inputs, why",
    [
        ("RescaleCFG", {"multiplier": 0.7}, "eps/v-prediction formulas"),
        ("APG", {"eta": 1.0, "norm_threshold": 5.0, "momentum": 0.0}, "c + s * g"),
        ("NAGuidance", {"nag_scale": 5.0, "nag_alpha": 0.5, "nag_tau": 1.5}, "self-attention"),
    ],
)
def test_cfg_nodes_with_other_maths_say_so(class_type: str, inputs: dict, why: str) -> None:
    with pytest.raises(AnimaError, match=rf"^node 100 \({class_type}\) is not supported: ") as e:
        _plan(_with_model_node(class_type, **inputs))
    assert why in str(e.value)


def test_zeroed_negative_and_lora_loader_halves() -> None:
    data = _graph("wf_c_lora_kohya_08")
    data["200"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["75", 0]}}
    data["76"]["inputs"]["negative"] = ["200", 0]
    data["83"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["78", 0],
            "clip": ["71", 0],
            "lora_name": "anima_tiny_lora_kohya.safetensors",
            "strength_model": 0.8,
            "strength_clip": 0.3,
        },
    }
    for enc in ("75", "77"):
        data[enc]["inputs"]["clip"] = ["83", 1]
    r = _plan(data).jobs[0].recipe
    assert r.comfy.zero_negative
    assert r.loras == (("anima_tiny_lora_kohya.safetensors", 0.8),)
    assert r.comfy.clip_loras == (("anima_tiny_lora_kohya.safetensors", 0.3),)


def test_noise_mask_maps_to_comfy_semantics() -> None:
    data = _graph("wf_e_img2img_denoise_055")
    data["94"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["93", 0], "mask": ["90", 1]}}
    data["76"]["inputs"]["latent_image"] = ["94", 0]
    (job,) = _plan(data).jobs
    c = job.recipe.comfy
    assert (c.noise_mask, c.mask_channel, job.recipe.inpaint.mask_blur) == (True, "alpha", 0)
    assert job.recipe.sources.mask == "/input/wf_init_140x108.png"


def test_several_outputs_are_several_jobs() -> None:
    data = _graph("wf_a_anima_base_flat")
    data["9"] = {"class_type": "SaveImage", "inputs": {"images": ["73", 0], "filename_prefix": "second"}}
    data["10"] = {
        "class_type": "PreviewImage",
        "inputs": {"images": ["73", 0]},
    }  # previews: only without saves
    assert [j.output for j in _plan(data).jobs] == ["9", "46"]


def _template(name: str) -> dict:
    return json.loads((TEMPLATES / f"{name}.json").read_text())


@pytest.mark.parametrize(
    "name, unet, sampler",
    [
        ("image_anima_base_v1", "anima-base-v1.0.safetensors", "euler"),
        ("image_anima_preview", "anima-preview3-base.safetensors", "er_sde"),
    ],
)
def test_official_templates_resolve(name: str, unet: str, sampler: str) -> None:
    (job,) = _plan(_template(name)).jobs
    r = job.recipe
    assert job.output == "46" and job.files.unet == unet
    assert (job.files.clip, job.files.vae) == ("qwen_3_06b_base.safetensors", "qwen_image_vae.safetensors")
    assert (r.sampler, r.scheduler, r.cfg, r.steps) == (sampler, "simple", 4.0, 30)
    assert r.negative_prompt == BY_ID["wf_a_anima_base_flat"]["parameters"]["negative"]
    assert (r.width, r.height) == (1024, 1024) and r.loras == ()  # turbo off: its LoRA never loads


LLLITE_SIZES = {
    "wired_serenity_cyber_figure.png": (832, 1216),
    "goat_horned_spirit_girl.png": (1024, 1024),
    "anima_depth_ref.png": (1024, 768),
}


def test_lllite_templates_say_what_they_need() -> None:
    """The any-control and inpainting templates plan, their control pictures as derivations the
    runner computes (tests/test_comfy_derived.py runs them); the depth template's Depth Anything 3
    subgraph (on no switch) is one line that says to give a depth map."""
    from anima.interop.comfyui import values as V
    from anima.interop.comfyui.plan import DERIVED
    from anima.recipe.image_ops import Resize

    (job,) = _plan(_template("image_anima_lllite_any_control_to_image"), LLLITE_SIZES).jobs
    (unit,) = job.recipe.controls
    assert (unit.model, unit.image, unit.mask) == ("anima-lllite-any-test-like-v2.safetensors", DERIVED, "")
    assert (unit.strength, unit.start, unit.end) == (1.0, 0.0, 1.0)
    (d,) = job.derived
    assert (d.unit, d.what, d.value.name) == (0, "image", "/input/wired_serenity_cyber_figure.png")
    # LoadImage -> Canny (0.17, 0.45) -> ImageInvert -> ResizeImageMaskNode (1 megapixel, lanczos)
    assert V.content(d.value.ops) == V.content(
        (V.Canny(0.17, 0.45, ""), V.Invert(""), Resize("lanczos", 847, 1238))
    )
    # GetImageSize of the resized control picture sizes the latent (EmptyLatentImage, cropped to 8)
    assert (job.recipe.width, job.recipe.height, job.recipe.loras) == (840, 1232, ())

    (job,) = _plan(_template("image_anima_lllite_image_inpainting"), LLLITE_SIZES).jobs
    (unit,) = job.recipe.controls
    assert (unit.model, unit.image, unit.mask) == ("anima-lllite-inpainting-v2.safetensors", DERIVED, DERIVED)
    painted, mask = job.derived
    painter = "/input/painter/painter-694-1784648658071.png [temp]"
    assert (painted.what, V.content(painted.value.ops)) == ("image", V.content((V.Paint(painter, ""),)))
    assert (mask.what, mask.value.file, mask.value.base.size) == ("mask", painter, (1024, 1024))
    # its turbo switch is on: the LoRA, 8 steps, CFG 1
    r = job.recipe
    assert (r.loras, r.steps, r.cfg) == ((("anima-turbo-lora-v0.2.safetensors", 1.0),), 8, 1.0)

    with pytest.raises(AnimaError) as err:
        _plan(_template("image_anima_lllite_depth_control_to_image"), LLLITE_SIZES)
    text = str(err.value)
    assert text.startswith("node 690:687 (DA3Render) is not supported: anima has no depth estimator")
    assert "give a depth map file instead" in text and "\n" not in text


def test_api_graph_of_a_request_body() -> None:
    body = {"prompt": _graph("wf_a_anima_base_flat"), "client_id": "x"}
    assert _plan(body).jobs[0].recipe.seed == 424242
    assert parse_api(body).node("76").class_type == "KSampler"


def test_chains_are_compared_by_what_they_compute() -> None:
    # The second pass's prompt comes from its own CLIPTextEncode node with the same text, and the
    # VAE is loaded twice: still one recipe (the nodes differ, not what they compute).
    data = _hires_graph()
    data["102"] = copy.deepcopy(data["77"])
    data["101"]["inputs"]["positive"] = ["102", 0]
    data["103"] = copy.deepcopy(data["72"])
    data["73"]["inputs"]["vae"] = ["103", 0]
    assert _plan(data).jobs[0].recipe.hires.scale == 1.5


def test_control_masks_from_different_channels_are_one_line() -> None:
    from anima.interop.comfyui import values as V
    from anima.interop.comfyui.plan import _mask_channel

    def unit(channel: str) -> V.Control:
        mask = V.Mask("m.png", channel, "node 9 (LoadImageMask)")
        return V.Control(V.Patch("p", "n"), V.Picture("c.png", "n", (64, 64)), mask, 1.0, 0.0, 1.0, 3.0, "n")

    assert _mask_channel((unit("alpha"),), None) == {"mask_channel": "alpha"}
    with pytest.raises(AnimaError, match=r"^the graph's masks come from different channels \(alpha, red\)"):
        _mask_channel((unit("alpha"), unit("red")), None)
