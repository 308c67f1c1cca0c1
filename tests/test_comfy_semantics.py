"""The ComfyUI node semantics the pipeline reproduces, piece by piece, against the fixtures' numbers:
KSamplerAdvanced's window, ComfyUI's LoRA key rule, ConditioningZeroOut, common_upscale, LoadImage's
alpha mask, SetLatentNoiseMask's latent mask, and the recipe settings that carry them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from comfy_support import BY_ID, FIX, tiny_weights
from conftest import TOKENIZERS, load_st
from PIL import Image
from safetensors.torch import save_file

from anima.errors import AnimaError
from anima.interop import a1111
from anima.lora.comfy_keys import load_half
from anima.lora.file import load_lora
from anima.pipeline import Pipeline
from anima.pipeline.passes import SamplingPass
from anima.recipe import Advanced, Recipe
from anima.workflows import comfy_image

LORAS = FIX / "models" / "loras"


def test_ksampler_advanced_window_is_the_fixture_schedule() -> None:
    case = BY_ID["wf_d_ksampler_advanced_dpmpp_2m_sde_karras"]
    spec = SamplingPass(8, 1.0, "dpmpp_2m_sde", "karras", Advanced(start_step=2, end_step=6))
    ref = load_st(FIX / case["files"]["outputs"])["sigmas"]
    assert torch.equal(spec.sigmas(3.0), ref)  # karras(8): s2..s5, then s6 forced to 0
    left = SamplingPass(8, 1.0, "euler", "karras", Advanced(start_step=2, end_step=6, leftover_noise=True))
    assert left.sigmas(3.0)[-1] > 0
    with pytest.raises(AnimaError, match="start step 8 leaves no step of the 8-step schedule to run"):
        SamplingPass(8, 1.0, "euler", "karras", Advanced(start_step=8)).sigmas(3.0)


def _patched(lora) -> list[str]:
    out = []
    for t in lora.adapters:
        prefix = "diffusion_model.llm_adapter." if t.part == "adapter" else "diffusion_model."
        out.append(f"{prefix}{t.path}.weight")
    return sorted(out)


@pytest.mark.parametrize(
    "name, index", [("anima_tiny_lora_kohya.safetensors", 0), ("anima_tiny_lora_peft.safetensors", 1)]
)
def test_comfyui_key_rule_patches_what_comfyui_patched(name: str, index: int) -> None:
    case = BY_ID["wf_c2_lora_peft_chain_shift5_er_sde"]
    lora, notes = load_half(LORAS / name, name, "model")
    assert _patched(lora) == sorted(case["lora_patched_keys"][index]) and notes == []


def test_comfyui_key_rule_skips_bare_peft_and_transformer_keys(tmp_path) -> None:
    # ComfyUI maps only lora_unet_* and diffusion_model.* to the Anima DiT ("lora key not loaded"
    # for the rest); anima's own loader reads the same file whole.
    down, up = torch.randn(4, 256), torch.randn(256, 4)
    tensors = {
        "diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight": down,
        "diffusion_model.blocks.0.self_attn.q_proj.lora_B.weight": up,
        "blocks.1.self_attn.q_proj.lora_A.weight": down.clone(),
        "blocks.1.self_attn.q_proj.lora_B.weight": up.clone(),
        "transformer.transformer_blocks.0.attn1.to_k.lora_A.weight": down.clone(),
        "transformer.transformer_blocks.0.attn1.to_k.lora_B.weight": up.clone(),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path))
    lora, notes = load_half(path, "mixed", "model")
    assert [str(t) for t in lora.adapters] == ["dit:blocks.0.self_attn.q_proj"]
    assert len(notes) == 1 and notes[0].startswith("LoRA mixed: 4 keys are not loaded, as ComfyUI's loader")
    assert len(load_lora(path).adapters) == 3


def test_lora_loader_text_encoder_half(tmp_path) -> None:
    tensors = {
        "lora_unet_blocks_0_mlp_layer1.lora_down.weight": torch.randn(4, 256),
        "lora_unet_blocks_0_mlp_layer1.lora_up.weight": torch.randn(1024, 4),
        "lora_te_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(4, 64),
        "lora_te_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(128, 4),
    }
    path = tmp_path / "both.safetensors"
    save_file(tensors, str(path))
    model, model_notes = load_half(path, "both", "model")
    clip, clip_notes = load_half(path, "both", "clip")
    assert [t.part for t in model.adapters] == ["dit"] and [t.part for t in clip.adapters] == ["te"]
    assert model_notes == clip_notes == []


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    w = tiny_weights()
    return Pipeline.from_files(
        w / "anima_tiny_dit.safetensors", w / "qwen3_tiny_te.safetensors", w / "wan21_tiny_vae.safetensors",
        tokenizer_dir=TOKENIZERS, device="cpu", dtype="fp32",
    )  # fmt: skip


def test_zeroed_negative_zeroes_the_qwen_states_only(pipe: Pipeline) -> None:
    # ConditioningZeroOut zeroes cond[0], which for Anima is the Qwen3 output; the T5 ids and
    # weights ride in the cond's dict, so the adapter still runs: the context is not zero.
    prompt = "worst quality, (low quality:1.2)"
    c = pipe.conditioner
    zeroed = c.encode(prompt, zero_states=True)
    tokens = c.tokenizer.tokenize(prompt)
    hidden = torch.zeros(1, len(tokens.qwen_ids), pipe.text_encoder.embed_tokens.weight.shape[1])
    with torch.no_grad():
        out = pipe.adapter(hidden, torch.tensor([tokens.t5_ids]))
    expected = out * torch.tensor(tokens.t5_weights)[None, :, None]
    n = len(tokens.t5_ids)
    assert torch.equal(zeroed.context[:, :n], expected) and not zeroed.context[:, :n].eq(0).all()
    assert not torch.equal(zeroed.context, c.encode(prompt).context)


def test_common_upscale_centre_crop_and_methods() -> None:
    x = torch.rand(1, 3, 120, 161)
    cropped = comfy_image.centre_crop(x, 128, 128)
    assert cropped.shape[-2:] == (120, 121)  # round(20.5) = 20 columns off each side (Python round)
    assert torch.equal(cropped, x[..., 20:141])
    for method in ("bilinear", "bicubic", "nearest-exact", "area"):
        got = comfy_image.common_upscale(x, 96, 64, method)
        assert torch.equal(got, F.interpolate(x, size=(64, 96), mode=method))
    img = torch.rand(1, 3, 20, 30)
    lanczos = comfy_image.common_upscale(img, 45, 30, "lanczos")
    bytes_ = np.clip(255 * img[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.uint8)
    want = (
        np.asarray(Image.fromarray(bytes_).resize((45, 30), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    )
    assert torch.equal(lanczos[0].permute(1, 2, 0), torch.from_numpy(want))


def test_load_image_alpha_mask_is_one_minus_alpha() -> None:
    path = FIX / "input" / "wf_inpaint_rgba_128.png"
    mask = comfy_image.load_mask(path, "alpha")
    alpha = np.asarray(Image.open(path).getchannel("A"), dtype=np.float32) / np.float32(255)
    assert torch.equal(mask[0], 1 - torch.from_numpy(alpha))
    values = {round(float(v), 3) for v in np.unique(mask.numpy())}
    assert {0.0, 1.0, 0.498, 0.502} <= values  # box 1, frame 127/128 either side of 0.5
    rgb = comfy_image.load_mask(FIX / "input" / "wf_init_140x108.png", "alpha")
    assert rgb.shape == (1, 64, 64) and not rgb.any()  # no alpha: LoadImage's 64x64 zero mask


def test_noise_mask_latent_is_trilinear_to_the_latent() -> None:
    mask = torch.rand(1, 104, 136)
    got = comfy_image.noise_mask_latent(mask, (2, 16, 1, 13, 17))
    want = F.interpolate(mask[None, None], size=(1, 13, 17), mode="trilinear")
    assert got.shape == (2, 1, 1, 13, 17) and torch.equal(got[1], want[0])


def test_comfy_settings_round_trip_json_and_infotext() -> None:
    r = Recipe.make(
        "x", start_step=2, end_step=6, add_noise=False, leftover_noise=True, zero_negative=True,
        loras=[("a.safetensors", 0.5)], lora_keys="comfyui", clip_loras=[("a.safetensors", 0.3)],
        init_resize="bicubic 512x512 center; crop 2,2 508x508", mask_channel="alpha", noise_mask=True,
    )  # fmt: skip
    assert Recipe.from_json(r.to_json()) == r
    assert json.loads(r.to_json())["comfy"]["clip_loras"] == [["a.safetensors", 0.3]]
    assert a1111.recipe_from_infotext(a1111.parse_infotext(a1111.infotext(r))) == r


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"init_resize": "bicubic 512"}, "init resize: cannot read 'bicubic 512'"),
        ({"init_resize": "nearest 64x64"}, "init resize: cannot read 'nearest 64x64'"),
        ({"lora_keys": "kohya"}, "unknown LoRA key rule 'kohya'"),
        ({"clip_loras": [("a", 1.0)]}, "clip LoRAs come from ComfyUI graphs"),
        ({"start_step": 2, "denoise": 0.5}, "start/end steps (KSamplerAdvanced) run with denoise 1"),
        ({"end_step": -1}, "end step must be an integer in 0..10000"),
    ],
)
def test_bad_comfy_settings_are_one_line(settings: dict, message: str) -> None:
    with pytest.raises(AnimaError) as e:
        Recipe.make("x", **settings)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
