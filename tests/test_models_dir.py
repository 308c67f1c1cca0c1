"""Model discovery: header sniffing, search order, pairing by width, tokenizers, bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TOKENIZERS
from safetensors.numpy import save_file

from anima.errors import AnimaError
from anima.weights.discovery import (
    ModelSet,
    choose,
    default_comfyui_dirs,
    default_data_dir,
    default_hf_cache,
    discover,
    file_sha256,
    find_tokenizers,
    header_shapes,
    inspect_file,
    resolve_lora,
    scan,
    sniff_kind,
)

WEIGHTS = TINY / "weights"


def write_st(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, np.float16) for k, s in shapes.items()}, str(path))
    return path


def dit_keys(prefix: str = "net.", width: int = 64, latent: int = 16) -> dict:
    return {
        prefix + "blocks.0.mlp.layer1.weight": (2, 2),
        prefix + "x_embedder.proj.1.weight": (2, (latent + 1) * 4),
        prefix + "llm_adapter.blocks.0.cross_attn.k_proj.weight": (2, width),
        prefix + "llm_adapter.out_proj.weight": (2, 2),
    }


def te_keys(prefix: str = "model.", width: int = 64) -> dict:
    return {prefix + "embed_tokens.weight": (3, width), prefix + "layers.0.self_attn.q_norm.weight": (4,)}


def vae_keys(latent: int = 16) -> dict:
    return {
        "decoder.head.0.gamma": (4, 1, 1, 1),
        "decoder.conv1.weight": (4, latent, 1, 1, 1),
        "conv2.weight": (latent, latent, 1, 1, 1),
    }


def diffusers_vae_keys(latent: int = 16) -> dict:
    return {
        "decoder.norm_out.gamma": (4, 1, 1, 1),
        "decoder.conv_in.weight": (4, latent, 1, 1, 1),
        "post_quant_conv.weight": (latent, latent, 1, 1, 1),
    }


def copy_tokenizers(qwen_dest: Path | None, t5_dest: Path | None) -> None:
    if qwen_dest is not None:
        shutil.copytree(TOKENIZERS / "qwen", qwen_dest)
    if t5_dest is not None:
        shutil.copytree(TOKENIZERS / "t5", t5_dest)


# --------------------------------------------------------------------- sniffing
def test_sniff_real_fixture_weights() -> None:
    dit = inspect_file(WEIGHTS / "anima_tiny_dit.safetensors")
    te = inspect_file(WEIGHTS / "qwen3_tiny_te.safetensors")
    vae = inspect_file(WEIGHTS / "wan21_tiny_vae.safetensors")
    assert (dit.kind, dit.text_width, dit.latent_channels) == ("dit", 64, 16)
    assert (te.kind, te.text_width) == ("text_encoder", 64)
    assert (vae.kind, vae.latent_channels) == ("vae", 16)
    assert len(header_shapes(WEIGHTS / "anima_tiny_dit.safetensors")) == 89


@pytest.mark.parametrize(
    ("keys", "kind"),
    [
        (dit_keys("net."), "dit"),
        (dit_keys("model.diffusion_model."), "dit"),
        (dit_keys(""), "dit"),
        (
            {"blocks.0.mlp.layer1.weight": (2, 2), "x_embedder.proj.1.weight": (2, 68)},
            "unknown",
        ),  # no adapter
        (te_keys("model."), "text_encoder"),
        (te_keys(""), "text_encoder"),
        ({"model.embed_tokens.weight": (3, 8), "model.layers.0.self_attn.q_proj.weight": (8, 8)}, "unknown"),
        (vae_keys(), "vae"),
        (diffusers_vae_keys(), "vae"),
        ({"decoder.norm_out.weight": (4,), "decoder.conv_in.weight": (4, 4, 3, 3)}, "unknown"),  # SD VAE
        ({"lora_unet_blocks_0_self_attn_q_proj.lora_down.weight": (4, 8)}, "lora"),
        ({"diffusion_model.blocks.0.self_attn.q_proj.lora_A.weight": (4, 8)}, "lora"),
        ({"blocks.0.mlp.layer1.lokr_w1": (2, 2)}, "lora"),
        ({"conditioner.embedders.0.weight": (2, 2)}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_sniff_kind(tmp_path: Path, keys: dict, kind: str) -> None:
    assert sniff_kind(write_st(tmp_path / "f.safetensors", keys)) == kind


def test_sniff_reads_widths_with_any_prefix(tmp_path: Path) -> None:
    info = inspect_file(write_st(tmp_path / "d.safetensors", dit_keys("model.diffusion_model.", 1024, 16)))
    assert (info.text_width, info.latent_channels) == (1024, 16)
    diffusers_vae = diffusers_vae_keys(latent=48)
    assert inspect_file(write_st(tmp_path / "v.safetensors", diffusers_vae)).latent_channels == 48


def test_corrupt_files_raise_naming_the_file(tmp_path: Path) -> None:
    good = json.dumps({"a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    cases = {
        "tiny.safetensors": b"\x01\x02",
        "long.safetensors": struct.pack("<Q", 10_000) + b"{}",
        "json.safetensors": struct.pack("<Q", 5) + b"{nope",
        "list.safetensors": struct.pack("<Q", 2) + b"[]",
        "entry.safetensors": struct.pack("<Q", 10) + b'{"a": 1}  ',
        "short.safetensors": struct.pack("<Q", len(good)) + good + b"\0" * 3,  # data cut off
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AnimaError, match=name.replace(".", r"\.")):
            sniff_kind(tmp_path / name)
    (tmp_path / "ok.safetensors").write_bytes(struct.pack("<Q", len(good)) + good + b"\0" * 8)
    assert sniff_kind(tmp_path / "ok.safetensors") == "unknown"
    for missing in (tmp_path / "missing.safetensors", tmp_path):
        with pytest.raises(AnimaError, match=str(missing)):
            sniff_kind(missing)


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"anima" * 1000)
    assert file_sha256(path, chunk=333) == hashlib.sha256(b"anima" * 1000).hexdigest()


# --------------------------------------------------------------------- discovery
@pytest.fixture()
def world(tmp_path: Path) -> dict[str, Path]:
    """A models folder, a ComfyUI install and an HF cache, each with a different DiT."""
    models = tmp_path / "models"
    write_st(models / "diffusion_models" / "anima-preview2.safetensors", dit_keys())
    write_st(models / "diffusion_models" / "mine" / "anima-base-v1.0.safetensors", dit_keys())
    write_st(models / "diffusion_models" / "flux1-dev.safetensors", {"double_blocks.0.x": (2,)})
    write_st(models / "text_encoders" / "qwen_3_06b_base.safetensors", te_keys())
    write_st(models / "vae" / "qwen_image_vae.safetensors", vae_keys())
    write_st(models / "loras" / "style.safetensors", {"a.lora_down.weight": (1, 1)})

    comfy = tmp_path / "ComfyUI"
    write_st(comfy / "models" / "diffusion_models" / "anima-preview.safetensors", dit_keys())
    write_st(comfy / "models" / "text_encoders" / "qwen_3_06b_base.safetensors", te_keys())
    write_st(comfy / "models" / "vae" / "qwen_image_vae.safetensors", vae_keys())
    write_st(comfy / "models" / "loras" / "detail.safetensors", {"a.lora_up.weight": (1, 1)})
    tok = comfy / "comfy" / "text_encoders"
    copy_tokenizers(tok / "qwen25_tokenizer", tok / "t5_tokenizer")

    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--circlestone-labs--Anima"
    blob = write_st(repo / "blobs" / "0123abcd", dit_keys())
    for rev in ("old", "abc123"):
        link = (
            repo / "snapshots" / rev / "split_files" / "diffusion_models" / "anima-preview3-base.safetensors"
        )
        link.parent.mkdir(parents=True)
        link.symlink_to(blob)  # the HF cache links snapshots to blobs
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    diff = hub / "models--circlestone-labs--Anima-Base-v1.0-Diffusers" / "snapshots" / "r1"
    for sub in ("transformer", "text_conditioner", "text_encoder", "vae"):
        (diff / sub).mkdir(parents=True)
    copy_tokenizers(diff / "tokenizer", diff / "t5_tokenizer")
    return {"models": models, "comfy": comfy, "hf": tmp_path / "hf", "diffusers": diff}


def test_discovery_order_and_pairing(world: dict[str, Path]) -> None:
    sets = discover(None, world["models"], [world["comfy"]], world["hf"])
    names = [s.name for s in sets]
    assert names == [
        "anima-base-v1.0",  # models folder, ranked before preview2 though it sits in a subfolder
        "anima-preview2",
        "anima-preview",  # ComfyUI install
        "anima-preview3-base",  # HF cache split_files (two snapshots, one blob: listed once)
        "Anima-Base-v1.0-Diffusers",
    ]
    base, _, comfy, hf, diff = sets
    assert base.text_encoder == world["models"] / "text_encoders" / "qwen_3_06b_base.safetensors"
    assert base.source.startswith("models-dir:") and comfy.source.startswith("comfyui:")
    # Same-source partners first: the ComfyUI DiT gets the ComfyUI text encoder and VAE.
    assert comfy.vae == world["comfy"] / "models" / "vae" / "qwen_image_vae.safetensors"
    # The models folder has no tokenizers: they come from the ComfyUI install.
    assert base.qwen_tokenizer == world["comfy"] / "comfy" / "text_encoders" / "qwen25_tokenizer"
    assert hf.source == "hf-cache:models--circlestone-labs--Anima"
    assert "snapshots/abc123/" in str(hf.dit)  # refs/main's revision wins
    assert hf.text_encoder.parent.parent == world["models"]  # borrowed from the first source
    assert diff.diffusers == world["diffusers"] and base.diffusers is None
    assert (
        diff.dit == world["diffusers"] / "transformer"
        and diff.qwen_tokenizer == world["diffusers"] / "tokenizer"
    )
    assert choose(sets) is base


def test_explicit_paths_override(world: dict[str, Path], tmp_path: Path) -> None:
    dit = write_st(tmp_path / "elsewhere" / "renamed.safetensors", dit_keys())
    vae = write_st(tmp_path / "elsewhere" / "my_vae.safetensors", vae_keys())
    sets = discover({"dit": dit, "vae": vae, "text_encoder": None}, world["models"], [world["comfy"]], None)
    assert len(sets) == 1
    (only,) = sets
    assert (only.name, only.dit, only.vae, only.source) == ("renamed", dit, vae, "explicit")
    assert only.text_encoder == world["models"] / "text_encoders" / "qwen_3_06b_base.safetensors"
    tok = {"qwen_tokenizer": TOKENIZERS / "qwen", "t5_tokenizer": TOKENIZERS / "t5"}
    (with_tok,) = discover({"dit": dit, **tok}, world["models"], [], None)
    assert (with_tok.qwen_tokenizer, with_tok.t5_tokenizer) == (TOKENIZERS / "qwen", TOKENIZERS / "t5")


def test_explicit_bad_inputs(world: dict[str, Path], tmp_path: Path) -> None:
    te = world["models"] / "text_encoders" / "qwen_3_06b_base.safetensors"
    with pytest.raises(AnimaError, match="is a Qwen3 text encoder file, not a VAE"):
        discover({"vae": te}, world["models"], [], None)
    with pytest.raises(AnimaError, match=r"nope\.safetensors"):
        discover({"dit": tmp_path / "nope.safetensors"}, None, [], None)
    with pytest.raises(AnimaError, match="unknown model slot"):
        discover({"unet": te}, None, [], None)
    with pytest.raises(AnimaError, match="not a t5 tokenizer folder"):
        discover({"t5_tokenizer": tmp_path}, None, [], None)
    wide = write_st(tmp_path / "qwen_3_4b.safetensors", te_keys(width=2560))
    with pytest.raises(AnimaError, match="does not fit DiT.*width 2560 vs 64"):
        discover({"text_encoder": wide}, world["models"], [], None)
    lonely = write_st(tmp_path / "lonely" / "anima-x.safetensors", dit_keys())
    with pytest.raises(AnimaError, match="no fitting text encoder"):
        discover({"dit": lonely}, None, [], None)


def test_pairing_skips_misfits_and_incomplete_sets(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_st(a / "diffusion_models" / "anima-base-v1.0.safetensors", dit_keys(width=64, latent=16))
    write_st(a / "text_encoders" / "qwen_3_4b.safetensors", te_keys(width=2560))  # Z-Image's encoder
    write_st(a / "vae" / "wan2.2_vae.safetensors", vae_keys(latent=48))
    write_st(b / "models" / "text_encoders" / "zz_qwen3.safetensors", te_keys(width=64))
    write_st(b / "models" / "vae" / "zz.safetensors", vae_keys(latent=16))
    assert discover(None, a, [], None) == []  # nothing fits: no set rather than a wrong one
    (s,) = discover(None, a, [b], None)
    assert s.text_encoder.name == "zz_qwen3.safetensors" and s.vae.name == "zz.safetensors"


def test_flat_folder_and_unreadable_files(tmp_path: Path) -> None:
    write_st(tmp_path / "my-dit.safetensors", dit_keys())
    write_st(tmp_path / "te.safetensors", te_keys())
    write_st(tmp_path / "v.safetensors", vae_keys())
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 4)
    (found,) = scan(tmp_path, [], None)
    assert [i.path.name for i in found.dits] == ["my-dit.safetensors"]
    assert len(found.problems) == 1 and "broken.safetensors" in found.problems[0]
    (s,) = discover(None, tmp_path, [], None)
    assert (s.name, s.text_encoder.name, s.vae.name) == ("my-dit", "te.safetensors", "v.safetensors")
    assert s == ModelSet("my-dit", s.dit, s.text_encoder, s.vae, None, None, f"models-dir:{tmp_path}")


def test_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(AnimaError, match="does not exist"):
        discover(None, tmp_path / "nope", [], None)
    (tmp_path / "fake_comfy").mkdir()
    with pytest.raises(AnimaError, match="not a ComfyUI install"):
        discover(None, None, [tmp_path / "fake_comfy"], None)
    assert discover(None, None, [], tmp_path / "no-cache") == []


def test_comfyui_models_folder_given_directly(world: dict[str, Path]) -> None:
    (s,) = discover(None, None, [world["comfy"] / "models"], None)
    assert (
        s.name == "anima-preview"
        and s.t5_tokenizer == world["comfy"] / "comfy" / "text_encoders" / "t5_tokenizer"
    )


def test_choose(world: dict[str, Path]) -> None:
    sets = discover(None, world["models"], [world["comfy"]], None)
    assert choose(sets, "anima-preview").source.startswith("comfyui:")  # exact beats substring
    assert choose(sets, "V1.0").name == "anima-base-v1.0"
    with pytest.raises(AnimaError, match="ambiguous; choose from: anima-preview2, anima-preview"):
        choose(sets, "preview")
    with pytest.raises(AnimaError, match="not found; choose from: anima-base-v1.0"):
        choose(sets, "sdxl")
    with pytest.raises(AnimaError, match="no Anima model found"):
        choose([])


def test_resolve_lora(world: dict[str, Path]) -> None:
    scans = scan(world["models"], [world["comfy"]], None)
    assert resolve_lora("style", scans) == world["models"] / "loras" / "style.safetensors"
    assert resolve_lora("DETAIL", scans).name == "detail.safetensors"
    direct = world["models"] / "loras" / "style.safetensors"
    assert resolve_lora(str(direct), []) == direct
    with pytest.raises(AnimaError, match="known: detail, style"):
        resolve_lora("nothing", scans)


# --------------------------------------------------------------------- tokenizers
def test_find_tokenizers_order(world: dict[str, Path], tmp_path: Path) -> None:
    assert find_tokenizers(tokenizer_dir=TOKENIZERS) == (TOKENIZERS / "qwen", TOKENIZERS / "t5")
    comfy_tok = world["comfy"] / "comfy" / "text_encoders"
    assert find_tokenizers(comfyui_dirs=[world["comfy"]]) == (
        comfy_tok / "qwen25_tokenizer",
        comfy_tok / "t5_tokenizer",
    )
    d = world["diffusers"]
    assert find_tokenizers(hf_cache=world["hf"]) == (d / "tokenizer", d / "t5_tokenizer")
    assert find_tokenizers(diffusers_dirs=[d], comfyui_dirs=[world["comfy"]])[0] == d / "tokenizer"
    data = tmp_path / "data"
    copy_tokenizers(None, data / "tokenizers" / "t5")  # only T5 downloaded: Qwen comes from later places
    got = find_tokenizers(data_dir=data, hf_cache=world["hf"])
    assert got == (d / "tokenizer", data / "tokenizers" / "t5")
    assert find_tokenizers() == (None, None)
    with pytest.raises(AnimaError, match="tokenizer-dir"):
        find_tokenizers(tokenizer_dir=tmp_path / "empty")


def test_discover_uses_tokenizer_dir_first(world: dict[str, Path]) -> None:
    sets = discover(None, None, [world["comfy"]], None, tokenizer_dir=TOKENIZERS)
    assert (sets[0].qwen_tokenizer, sets[0].t5_tokenizer) == (TOKENIZERS / "qwen", TOKENIZERS / "t5")


# --------------------------------------------------------------------- default places
def test_default_places(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert default_hf_cache({}, home) == home / ".cache" / "huggingface" / "hub"
    assert default_hf_cache({"XDG_CACHE_HOME": "/c"}, home) == Path("/c/huggingface/hub")
    assert default_hf_cache({"HF_HOME": "/h", "XDG_CACHE_HOME": "/c"}, home) == Path("/h/hub")
    assert default_hf_cache({"HF_HUB_CACHE": "/x", "HF_HOME": "/h"}, home) == Path("/x")
    assert default_data_dir({}, home) == home / ".local" / "share" / "anima"
    assert default_data_dir({"XDG_DATA_HOME": "/d"}, home) == Path("/d/anima")
    assert default_data_dir({"ANIMA_HOME": "/a"}, home) == Path("/a")
    (home / "ComfyUI" / "models").mkdir(parents=True)
    (home / "comfyui").mkdir()  # no models/: not an install
    assert home / "ComfyUI" in default_comfyui_dirs(home)
    assert home / "comfyui" not in default_comfyui_dirs(home)
