"""ComfyUI 8-bit DiT files made here in the layouts ComfyUI reads (comfy/utils.py convert_old_quants,
comfy/ops.py MixedPrecisionOps): scaled_fp8, per-layer comfy_quant fp8, int8 row-wise with ConvRot.

Why exact comparisons are right: dequantisation is an fp8/int8 -> float cast (exact) and one or two
products in a fixed order, the same float ops on both sides; only ConvRot's rotation is a float32
matmul, compared to a tolerance.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY

from anima.errors import AnimaError
from anima.model.quant_linear import QuantLinear, quantize_weight
from anima.runtime.quant import BLOCK_LINEARS
from anima.weights import loading
from anima.weights.convert import convert
from anima.weights.mapped_pages import file_mappings
from anima.weights.safetensors import load_mmap, save

DIT = TINY / "weights" / "anima_tiny_dit.safetensors"


def _layers(sd):
    return [
        f"net.blocks.{i}.{p}" for i in range(2) for p in BLOCK_LINEARS if f"net.blocks.{i}.{p}.weight" in sd
    ]


def _scaled_fp8(path, scale_input=True):
    sd = dict(load_mmap(DIT))
    for layer in _layers(sd):
        q, s = quantize_weight(sd[f"{layer}.weight"], "fp8", per_channel=False)
        sd[f"{layer}.weight"], sd[f"{layer}.scale_weight"] = q, s.reshape(())
        if scale_input:
            sd[f"{layer}.scale_input"] = torch.tensor(0.05)
    sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)  # ComfyUI's marker (its dtype matters)
    save(sd, path)
    return path


def _within_mapping(t: torch.Tensor) -> bool:
    return any(lo <= t.data_ptr() < hi for lo, hi in file_mappings())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_scaled_fp8_loads_8bit_and_matches_the_dequantized_weights(tmp_path, dtype) -> None:
    path = _scaled_fp8(tmp_path / "anima_fp8_scaled.safetensors")
    raw = load_mmap(path)
    dit, _ = loading.load_dit(path, dtype=dtype)
    for layer in _layers(raw):
        mod = dit.get_submodule(layer[len("net.") :])
        assert isinstance(mod, QuantLinear) and mod.weight.dtype == torch.float8_e4m3fn
        assert _within_mapping(mod.weight)  # a view of the file: no bf16 copy of the model was made
        want = raw[f"{layer}.weight"].to(dtype) * raw[f"{layer}.scale_weight"].to(dtype)  # ComfyUI's dequant
        assert torch.equal(mod.dequantize(), want), layer
        assert mod.input_scale is not None and float(mod.input_scale) == pytest.approx(0.05)
    assert type(dit.blocks[0].adaln_modulation_mlp[1]) is torch.nn.Linear  # unscaled layers load as usual
    x, s, c = torch.randn(1, 16, 1, 8, 8), torch.tensor([0.4]), torch.randn(1, 8, 128)
    ref, _ = loading.load_dit(DIT, dtype=dtype)
    with torch.no_grad():
        for layer in _layers(raw):
            ref.get_submodule(layer[len("net.") :]).weight.copy_(
                dit.get_submodule(layer[len("net.") :]).dequantize()
            )
        assert torch.equal(dit(x.to(dtype), s, c.to(dtype)), ref(x.to(dtype), s, c.to(dtype)))


def _hadamard_reference(g: int) -> torch.Tensor:
    """ConvRot's regular Hadamard (Kronecker powers of its 4x4 H4), built independently with numpy."""
    h4 = np.array([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=np.float64)
    h = h4
    while h.shape[0] < g:
        h = np.kron(h, h4)
    return torch.from_numpy(h / np.sqrt(g)).float()


def test_comfy_quant_int8_rowwise_convrot_and_fp8_mixed(tmp_path) -> None:
    sd = dict(load_mmap(DIT))
    layers, configs = _layers(sd), {}
    h = _hadamard_reference(256)
    originals = {}
    for i, layer in enumerate(layers):
        w = sd[f"{layer}.weight"].float()
        originals[layer] = w
        if i % 3 == 2:  # leave some layers in bf16: a mixed-precision file
            continue
        rotate = w.shape[1] % 256 == 0 and i % 2 == 0
        cfg = {"format": "int8_tensorwise"} if i % 3 == 0 else {"format": "float8_e4m3fn"}
        if cfg["format"] == "int8_tensorwise":
            stored = (w.reshape(w.shape[0], -1, 256) @ h.t()).reshape(w.shape) if rotate else w
            q, s = quantize_weight(stored, "int8", per_channel=True)
            if rotate:
                cfg.update(convrot=True, convrot_groupsize=256)
        else:
            q, s = quantize_weight(w, "fp8", per_channel=False)
            s = s.reshape(())
        sd[f"{layer}.weight"], sd[f"{layer}.weight_scale"] = q, s
        sd[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps(cfg).encode()), dtype=torch.uint8)
        configs[layer] = cfg
    path = tmp_path / "anima_int8_convrot.safetensors"
    save(sd, path, metadata={"format": "pt"})
    dit, _ = loading.load_dit(path, dtype=torch.bfloat16)
    raw = load_mmap(path)
    assert any(c.get("convrot") for c in configs.values())
    for layer in layers:
        mod = dit.get_submodule(layer[len("net.") :])
        cfg = configs.get(layer)
        if cfg is None:
            assert type(mod) is torch.nn.Linear and mod.weight.dtype == torch.bfloat16
            continue
        q, s = raw[f"{layer}.weight"], raw[f"{layer}.weight_scale"]
        if cfg["format"] == "int8_tensorwise":
            dense = q.float() * s  # comfy-kitchen: q.float() * scale, then the rotation, then the cast
            if cfg.get("convrot"):
                dense = (dense.reshape(dense.shape[0], -1, 256) @ h.t()).reshape(dense.shape)
                assert mod.rotation == 256
                assert torch.allclose(mod.dequantize().float(), dense.bfloat16().float(), atol=1e-2)
            else:
                assert torch.equal(mod.dequantize(), dense.bfloat16())
        else:
            assert torch.equal(mod.dequantize(), q.to(torch.bfloat16) * s.to(torch.bfloat16))
        # The rotation is undone the right way round: back to the original weight, up to 8-bit rounding.
        err = (mod.dequantize().float() - originals[layer]).norm() / originals[layer].norm()
        assert err < 0.05, (layer, err)


def test_our_8bit_files_are_comfy_quant_and_load_back(tmp_path) -> None:
    for fmt in ("int8", "fp8"):
        out = convert(DIT, tmp_path / f"dit-{fmt}.safetensors", fmt, report=lambda s: None)
        dit, _ = loading.load_dit(out, dtype=torch.bfloat16)
        layer = dit.blocks[1].mlp.layer2
        assert isinstance(layer, QuantLinear) and layer.fmt == fmt
        assert (layer.scale.numel() > 1) == (fmt == "int8")  # int8 per row, fp8 per tensor (ComfyUI's)


def test_unsupported_8bit_formats_are_named(tmp_path) -> None:
    sd = dict(load_mmap(DIT))
    layer = "net.blocks.0.mlp.layer1"
    sd[f"{layer}.comfy_quant"] = torch.tensor(list(b'{"format": "nvfp4"}'), dtype=torch.uint8)
    sd[f"{layer}.weight_scale"] = torch.tensor(1.0)
    save(sd, tmp_path / "nvfp4.safetensors")
    with pytest.raises(AnimaError, match="uses the 'nvfp4' format, which anima cannot load"):
        loading.load_dit(tmp_path / "nvfp4.safetensors")


def test_pipeline_notes_say_what_the_file_brought(tmp_path) -> None:
    from conftest import TOKENIZERS

    from anima.pipeline import Pipeline

    path = _scaled_fp8(tmp_path / "anima_fp8_scaled.safetensors")
    w = TINY / "weights"
    pipe = Pipeline.from_files(path, w / "qwen3_tiny_te.safetensors", w / "wan21_tiny_vae.safetensors",
                               tokenizer_dir=TOKENIZERS, device="cpu", dtype="bf16")  # fmt: skip
    assert "weights from the file: 20 layers fp8 (dequantise + matmul)" in pipe.notes


def test_int8_nodes_bare_layout_without_json_configs(tmp_path) -> None:
    """The INT8 nodes' Int8TensorwiseOps write <layer>.weight (int8) + <layer>.weight_scale only."""
    sd = dict(load_mmap(DIT))
    layers = _layers(sd)
    for layer in layers:
        q, s = quantize_weight(sd[f"{layer}.weight"], "int8", per_channel=False)
        sd[f"{layer}.weight"], sd[f"{layer}.weight_scale"] = q, s.reshape(())
    save(sd, tmp_path / "int8_bare.safetensors")
    raw = load_mmap(tmp_path / "int8_bare.safetensors")
    dit, _ = loading.load_dit(tmp_path / "int8_bare.safetensors", dtype=torch.bfloat16)
    for layer in layers:
        mod = dit.get_submodule(layer[len("net.") :])
        want = (raw[f"{layer}.weight"].float() * raw[f"{layer}.weight_scale"]).bfloat16()
        assert isinstance(mod, QuantLinear) and torch.equal(mod.dequantize(), want)
