"""Loaders: zero-copy memory maps, strictness, and one-line errors for the wrong file."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from conftest import TINY

from anima.errors import AnimaError
from anima.weights import loading
from anima.weights.safetensors import load_mmap, read_header, save

W = TINY / "weights"


def test_bf16_load_is_zero_copy_views_of_one_mapping() -> None:
    dit, adapter = loading.load_dit(W / "anima_tiny_dit.safetensors", dtype=torch.bfloat16)
    ptrs = {p.untyped_storage().data_ptr() for m in (dit, adapter) for p in m.parameters()}
    assert len(ptrs) == 1  # every parameter is a view into the same file mapping
    ref = load_mmap(W / "anima_tiny_dit.safetensors")
    assert torch.equal(dit.x_embedder.proj[1].weight, ref["net.x_embedder.proj.1.weight"])
    assert not any(p.requires_grad for p in dit.parameters())


def test_fp32_load_upcasts_exactly() -> None:
    # Causal convs keep their last temporal tap only (the others multiply the zero padding of a
    # single frame): the state dict has the file's shapes, that tap exactly, zeros before it.
    vae = loading.load_vae(W / "wan21_tiny_vae.safetensors", dtype=torch.float32)
    ref = load_mmap(W / "wan21_tiny_vae.safetensors")
    taps = 0
    for k, v in vae.state_dict().items():
        want = ref[k].float()
        assert v.dtype == torch.float32 and v.shape == want.shape, k
        if v.ndim == 5 and v.shape[2] > 1:
            taps += 1
            assert torch.equal(v[:, :, -1], want[:, :, -1]) and not v[:, :, :-1].any(), k
        else:
            assert torch.equal(v, want), k
    assert taps > 10
    held = vae.decoder.upsamples[0].residual[2].weight
    assert held.shape[2] == 1 and held.is_contiguous()


@pytest.mark.parametrize(
    ("loader", "path", "needle"),
    [
        (
            loading.load_dit,
            W / "wan21_tiny_vae.safetensors",
            "looks like a Qwen-Image / Wan-2.1 VAE file; pass it as --vae",
        ),
        (loading.load_dit, W / "qwen3_tiny_te.safetensors", "pass it as --text-encoder"),
        (loading.load_vae, W / "anima_tiny_dit.safetensors", "pass it as --dit"),
        (loading.load_text_encoder, W / "wan21_tiny_vae.safetensors", "expected the Qwen3 text encoder"),
    ],
)
def test_wrong_slot(loader, path: Path, needle: str) -> None:
    with pytest.raises(AnimaError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        loader(path)


def _write(path: Path, tensors: dict) -> Path:
    save(tensors, path)
    return path


def test_other_architectures_are_named(tmp_path: Path) -> None:
    lora = _write(
        tmp_path / "l.safetensors",
        {"lora_unet_blocks_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 8)},
    )
    with pytest.raises(AnimaError, match="LoRA"):
        loading.load_dit(lora)
    sdxl_vae = _write(tmp_path / "v.safetensors", {"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(AnimaError, match="another architecture"):
        loading.load_vae(sdxl_vae)
    sd = load_mmap(W / "anima_tiny_dit.safetensors")
    cosmos = _write(tmp_path / "c.safetensors", {k: v for k, v in sd.items() if "llm_adapter" not in k})
    with pytest.raises(AnimaError, match="without the Anima LLM adapter"):
        loading.load_dit(cosmos)


def test_missing_and_misshapen_keys(tmp_path: Path) -> None:
    sd = dict(load_mmap(W / "anima_tiny_dit.safetensors"))
    del sd["net.blocks.1.mlp.layer2.weight"]
    with pytest.raises(AnimaError, match=r"1 missing keys \(e\.g\. blocks\.1\.mlp\.layer2\.weight\)"):
        loading.load_dit(_write(tmp_path / "m.safetensors", sd))
    sd = dict(load_mmap(W / "anima_tiny_dit.safetensors"))
    sd["net.blocks.0.self_attn.q_proj.weight"] = torch.zeros(256, 255, dtype=torch.bfloat16)
    with pytest.raises(AnimaError, match="has shape"):
        loading.load_dit(_write(tmp_path / "s.safetensors", sd))


def test_corrupt_and_truncated_headers(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    with pytest.raises(AnimaError, match="not a safetensors file"):
        read_header(tmp_path / "a")
    (tmp_path / "b").write_bytes(struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(AnimaError, match="truncated"):
        read_header(tmp_path / "b")
    data = (W / "qwen3_tiny_te.safetensors").read_bytes()
    (tmp_path / "c").write_bytes(data[: len(data) // 2])
    with pytest.raises(AnimaError, match="truncated.*Re-download"):
        loading.load_text_encoder(tmp_path / "c")
    with pytest.raises(AnimaError, match="not found"):
        loading.load_vae(tmp_path / "nothing.safetensors")
