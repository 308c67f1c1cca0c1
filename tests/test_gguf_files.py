"""GGUF files: stable-diffusion.cpp's and ComfyUI-GGUF's DiT layouts, llama.cpp's text encoder, bad files.

The stable-diffusion.cpp files in tests/data/gguf were written by its own converter from the tiny
fixture DiT (provenance in their README). The reference for "the same weights" is the GGUF file
dequantised by the `gguf` package and saved as float32 safetensors: the image from the GGUF must
equal the image from that file to 1/255 (the fixture README's tolerance; both runs are fp32 on the
same CPU, so in practice they agree to float rounding of identical maths).
"""

from __future__ import annotations

from pathlib import Path

import gguf  # a core dependency: the format's own library is the reference
import numpy as np
import pytest
import torch
from conftest import REPO, TINY, TOKENIZERS

from anima.errors import AnimaError
from anima.model.ggml_modules import GGMLEmbedding, GGMLLinear
from anima.model.qmatmul import FBGEMM, choose_kernel, device_capability
from anima.pipeline import Pipeline
from anima.recipe import Recipe
from anima.runtime.quant import has_int8_kernel
from anima.weights import loading
from anima.weights.convert import convert
from anima.weights.gguf_file import load_gguf, read_gguf
from anima.weights.safetensors import load_mmap, save

DATA = REPO / "tests" / "data" / "gguf"
W = TINY / "weights"
SDCPP = {q: DATA / f"anima_tiny_dit-{q}.gguf" for q in ("q8_0", "q4_K", "f16")}


def dequantized_reference(path: Path, out: Path, rename=lambda k: k) -> Path:
    """The GGUF's tensors dequantised by the gguf package itself, as a float32 safetensors file."""
    reader = gguf.GGUFReader(path)
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        tensors[rename(t.name)] = torch.from_numpy(values.reshape(tuple(reversed(t.shape.tolist()))).copy())
    save(tensors, out)
    return out


def _image(dit: Path, te: Path = W / "qwen3_tiny_te.safetensors") -> torch.Tensor:
    pipe = Pipeline.from_files(dit, te, W / "wan21_tiny_vae.safetensors", tokenizer_dir=TOKENIZERS,
                               device="cpu", dtype="fp32")  # fmt: skip
    recipe = Recipe("red circle, blue background", width=64, height=64, steps=3, cfg=4.0,
                    sampler="euler", scheduler="simple", seed=3)  # fmt: skip
    return pipe.generate(recipe).images


def test_shapes_are_reversed_once_to_torch_order() -> None:
    header = read_gguf(SDCPP["q8_0"])
    reader = gguf.GGUFReader(SDCPP["q8_0"])
    official = {k: tuple(v.shape) for k, v in load_mmap(W / "anima_tiny_dit.safetensors").items()}
    assert header.shapes == official  # every tensor, torch order, names kept (net.*)
    on_disk = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}
    x = "net.x_embedder.proj.1.weight"
    assert official[x] == (256, 68) and on_disk[x] == (68, 256)  # GGUF lists the row length first
    assert header.arch is None  # stable-diffusion.cpp writes no architecture


@pytest.mark.parametrize("qtype", sorted(SDCPP))
def test_sdcpp_file_loads_quantised_and_generates_the_dequantised_image(qtype, tmp_path) -> None:
    dit, adapter = loading.load_dit(SDCPP[qtype], dtype=torch.float32)
    layer = dit.blocks[0].mlp.layer1
    if qtype == "f16":
        assert type(layer) is torch.nn.Linear
    else:
        assert isinstance(layer, GGMLLinear) and layer.qtype == qtype.upper().replace("Q4_K", "Q4_K")
        assert layer.weight.dtype == torch.uint8  # the raw blocks, not a dense copy
        ref = load_mmap(dequantized_reference(SDCPP[qtype], tmp_path / "w.safetensors"))
        assert torch.equal(layer.dequantize(), ref["net.blocks.0.mlp.layer1.weight"])
    reference = dequantized_reference(SDCPP[qtype], tmp_path / "ref.safetensors")
    got, want = _image(SDCPP[qtype]), _image(reference)
    assert got.shape == want.shape == (1, 64, 64, 3)
    if qtype == "q8_0" and has_int8_kernel(torch.device("cpu")):
        # Q8_0 layers run the CPU's int8 matmul (issue 19): weights re-rounded per row, activations
        # rounded to 8 bits. Close to the dequantised model's image, not equal.
        # fbgemm (plain AVX2, AVX-512F) rounds activations to 7 bits (reduce_range), half of
        # oneDNN's precision on VNNI/AMX CPUs: its mean bar is wider.
        kernel = choose_kernel("int8", "cpu", device_capability(torch.device("cpu")))
        diff = (got - want).abs()
        assert diff.mean().item() < (3 if kernel == FBGEMM else 2) / 255 and diff.max().item() <= 24 / 255
    else:
        assert (got - want).abs().max().item() <= 1 / 255


def test_comfyui_gguf_layout_from_our_converter(tmp_path) -> None:
    out = convert(
        W / "anima_tiny_dit.safetensors", tmp_path / "dit-Q8_0.gguf", "gguf-q8_0", report=lambda s: None
    )
    header = read_gguf(out)
    assert header.arch == "cosmos" and "blocks.0.mlp.layer1.weight" in header.tensors  # bare names
    assert header.tensors["blocks.0.mlp.layer1.weight"].qtype == "Q8_0"
    assert header.tensors["t_embedding_norm.weight"].qtype == "F32"  # 1-D stays F32
    assert header.tensors["x_embedder.proj.1.weight"].qtype == "BF16"  # embedders stay 16-bit
    dit, _ = loading.load_dit(out, dtype=torch.float32)
    ref = load_mmap(dequantized_reference(out, tmp_path / "ref.safetensors"))
    x, s, c = torch.randn(1, 16, 1, 8, 8), torch.tensor([0.7]), torch.randn(1, 8, 128)
    ref_dit, _ = loading.load_dit(tmp_path / "ref.safetensors", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(dit(x, s, c), ref_dit(x, s, c), atol=1e-5)
    assert torch.equal(dit.blocks[1].self_attn.q_proj.dequantize(), ref["blocks.1.self_attn.q_proj.weight"])


def _te_gguf(path: Path, embed_type: str = "Q8_0") -> Path:
    """The tiny text encoder as llama.cpp's converter names it (arch qwen3, blk.N.*), Q8_0 matrices."""
    from anima.weights.convert import _llama_name

    writer = gguf.GGUFWriter(path=None, arch="qwen3")
    for k, t in load_mmap(W / "qwen3_tiny_te.safetensors").items():
        name = _llama_name(k[len("model.") :])
        qt = "F32" if t.ndim == 1 else (embed_type if name.startswith("token_embd") else "Q8_0")
        data = gguf.quants.quantize(t.float().numpy(), gguf.GGMLQuantizationType[qt])
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qt])
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_text_encoder_gguf_in_llama_cpp_naming(tmp_path) -> None:
    path = _te_gguf(tmp_path / "qwen3-Q8_0.gguf")
    assert "blk.0.attn_q.weight" in {t.name for t in gguf.GGUFReader(path).tensors}
    te = loading.load_text_encoder(path)
    assert isinstance(te.embed_tokens, GGMLEmbedding)  # 151936 rows stay in Q8_0, read by lookup
    assert isinstance(te.layers[0].self_attn.q_proj, GGMLLinear)
    from anima.weights.gguf_header import llama_to_hf

    ref_path = dequantized_reference(path, tmp_path / "ref.safetensors", lambda k: "model." + llama_to_hf(k))
    ref = loading.load_text_encoder(ref_path)
    ids = torch.tensor([[151643, 40, 1000, 151000, 7]])
    assert torch.allclose(te.encode(ids), ref.encode(ids), atol=1e-5)
    img, want = _image(SDCPP["q8_0"], te=path), _image(SDCPP["q8_0"])
    assert img.shape == want.shape and torch.isfinite(img).all()


def _flux_like(path: Path) -> Path:
    writer = gguf.GGUFWriter(path=None, arch="flux")
    writer.add_tensor("double_blocks.0.img_attn.proj.weight", np.zeros((64, 64), dtype=np.float32))
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _patch_type(src: Path, dst: Path, name: str, type_id: int) -> Path:
    raw = bytearray(src.read_bytes())
    at = raw.index(name.encode()) + len(name)
    n_dims = int.from_bytes(raw[at : at + 4], "little")
    pos = at + 4 + 8 * n_dims
    raw[pos : pos + 4] = type_id.to_bytes(4, "little")
    dst.write_bytes(bytes(raw))
    return dst


def test_bad_files_give_one_line(tmp_path) -> None:
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(SDCPP["q8_0"].read_bytes()[:300_000])
    bad_type = _patch_type(SDCPP["q8_0"], tmp_path / "iq.gguf", "net.blocks.0.mlp.layer1.weight",
                           int(gguf.GGMLQuantizationType.IQ2_XXS))  # fmt: skip
    bogus_type = _patch_type(SDCPP["q8_0"], tmp_path / "bogus.gguf", "net.blocks.0.mlp.layer1.weight", 250)
    cases = [
        (truncated, "truncated"),
        (bad_type, "IQ2_XXS, a GGML type anima cannot dequantise"),
        (bogus_type, "unknown GGML quant type"),
        (_flux_like(tmp_path / "flux.gguf"), "GGUF file of another model (architecture 'flux')"),
        (_te_gguf(tmp_path / "te.gguf"), "looks like a Qwen3 text encoder file; pass it as --text-encoder"),
    ]
    for path, needle in cases:
        with pytest.raises(AnimaError) as e:
            loading.load_dit(path)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_loras_apply_on_gguf_layers_like_on_dense_ones(tmp_path) -> None:
    from anima.lora.apply import apply_loras
    from anima.lora.file import load_lora

    lora = load_lora(
        TINY.parent / "comfy-workflows" / "models" / "loras" / "anima_tiny_lora_kohya.safetensors"
    )
    dit, adapter = loading.load_dit(SDCPP["q8_0"], dtype=torch.float32)
    ref_dit, ref_adapter = loading.load_dit(dequantized_reference(SDCPP["q8_0"], tmp_path / "r.safetensors"))
    x, s, c = torch.randn(1, 16, 1, 8, 8), torch.tensor([0.6]), torch.randn(1, 8, 128)
    with torch.no_grad():
        plain = dit(x, s, c)
        with apply_loras({"dit": dit, "adapter": adapter}, [(lora, 0.8)]) as applied:
            assert applied.layers > 0
            got = dit(x, s, c)
        with apply_loras({"dit": ref_dit, "adapter": ref_adapter}, [(lora, 0.8)]):
            want = ref_dit(x, s, c)
    assert not torch.allclose(got, plain)  # the LoRA does something
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(AnimaError, match="cannot merge a LoRA into .*GGMLLinear.*use runtime mode"):
        apply_loras({"dit": dit}, [(lora, 0.8)], merge=True)


def test_gguf_blocks_stream_like_dense_ones() -> None:
    from anima.runtime.streaming import BlockStreamer

    dit, _ = loading.load_dit(SDCPP["q4_K"], dtype=torch.float32)
    x, s, c = torch.randn(1, 16, 1, 8, 8), torch.tensor([0.3]), torch.randn(1, 8, 128)
    with torch.no_grad():
        ref = dit(x, s, c)
        with BlockStreamer(dit.blocks, "cpu", resident=0, prefetch=1) as streamer:
            got = dit(x, s, c)  # the raw blocks are what moves: buffers stream like parameters
    assert torch.equal(got, ref) and streamer.stats.loads >= 2


def test_comfyui_gguf_original_shape_metadata_wins(tmp_path) -> None:
    """ComfyUI-GGUF stores some tensors reshaped to rows of 256 and records the real shape."""
    writer = gguf.GGUFWriter(path=None, arch="cosmos")
    data = np.arange(2 * 3 * 256, dtype=np.float32).reshape(6, 256)
    writer.add_array("comfy.gguf.orig_shape.t", [2, 3, 16, 16])
    writer.add_tensor("t", data)
    path = tmp_path / "shape.gguf"
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert read_gguf(path).tensors["t"].shape == (2, 3, 16, 16)
    t = load_gguf(path)["t"]
    assert t.dtype == torch.float32 and torch.equal(t.flatten(), torch.from_numpy(data).flatten())
