"""`anima models convert`: a bf16/fp32 DiT or text-encoder file -> GGUF, or -> an 8-bit safetensors file.

GGUF output is written with the `gguf` package in the layout ComfyUI-GGUF's converter produces and
both ComfyUI-GGUF and anima read: for the DiT ``general.architecture = "cosmos"`` and bare names
(``net.`` stripped), for the text encoder ``"qwen3"`` and llama.cpp's names. Which tensors are
quantised follows ComfyUI-GGUF's rules: 1-D tensors and tensors of at most 1024 values stay F32,
the patch embedder, timestep embedder, final layer and the adapter's T5 embedding stay in 16 bits
(its llama.cpp patch keeps the first three), and every other matrix whose rows are whole blocks is
quantised, the text encoder's token embedding included (as llama.cpp does).
The `gguf` package writes F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0 and Q4_1 (it has no K-quant
quantiser: Q4_K and friends come from llama.cpp's ``llama-quantize`` or ``sd-cli -M convert``).

The 8-bit output is ComfyUI's per-layer ``comfy_quant`` layout (`anima.weights.quant_files`), so
ComfyUI loads it as well: the blocks' attention and MLP projections (`anima.runtime.quant`'s
choice) as ``int8_tensorwise`` with a per-row scale, or ``float8_e4m3fn`` with a per-tensor scale
(what ComfyUI's fp8 layout takes); everything else is copied unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from anima.errors import AnimaError
from anima.model import ggml
from anima.model.quant_linear import quantize_weight
from anima.weights import file_kinds
from anima.weights.gguf_header import LLAMA_NAMES
from anima.weights.safetensors import load_mmap, read_header, save

GGUF_TYPES = ("F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1")
EIGHT_BIT = ("int8", "fp8")
TARGETS = tuple(f"gguf-{t.lower()}" for t in GGUF_TYPES) + EIGHT_BIT
# Kept in 16 bits by ComfyUI-GGUF's llama.cpp patch (tools/lcpp.patch): small and sensitive.
_KEEP = ("x_embedder.", "t_embedder.", "final_layer.", "llm_adapter.embed.")
# The block projections written in 8 bits (as `anima.runtime.quant.BLOCK_LINEARS`).
_EIGHT_BIT_LAYERS = (
    ".self_attn.q_proj.", ".self_attn.k_proj.", ".self_attn.v_proj.", ".self_attn.output_proj.",
    ".cross_attn.q_proj.", ".cross_attn.k_proj.", ".cross_attn.v_proj.", ".cross_attn.output_proj.",
    ".mlp.layer1.", ".mlp.layer2.",
)  # fmt: skip


def _source(src: Path) -> tuple[dict[str, torch.Tensor], file_kinds.Kind]:
    header = read_header(src)
    kind = file_kinds.detect(header.keys())
    if kind.kind not in (file_kinds.DIT, file_kinds.TEXT_ENCODER):
        raise AnimaError(
            f"{src}: converting needs an Anima DiT or Qwen3 text encoder file, not {kind.description}"
        )
    tensors = load_mmap(src, header)
    if any(t.dtype in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2) for t in tensors.values()):
        raise AnimaError(f"{src}: already quantised; convert from the bf16 (or fp32) file")
    return tensors, kind


def _llama_name(name: str) -> str:
    """Hugging Face Qwen3 name (without ``model.``) -> llama.cpp's."""
    if name.startswith("layers."):
        name = "blk." + name[len("layers.") :]
    for gguf_name, hf_name in LLAMA_NAMES:
        if name.startswith(hf_name):
            return gguf_name + name[len(hf_name) :]
        if hf_name.startswith(".") and hf_name in name:
            return name.replace(hf_name, gguf_name, 1)
    return name


def _gguf_type(name: str, t: torch.Tensor, qtype: str) -> str:
    if t.ndim == 1 or t.numel() <= 1024:
        return "F32"
    if qtype in ("F16", "BF16"):
        return qtype
    if any(k in name for k in _KEEP):
        return "BF16" if t.dtype == torch.bfloat16 else "F16"
    block = ggml.BLOCKS[qtype][0]
    return qtype if t.shape[-1] % block == 0 else ("BF16" if t.dtype == torch.bfloat16 else "F16")


def write_gguf(src: Path, dst: Path, qtype: str, report: Callable[[str], None] = print) -> Path:
    """Write `src` (a DiT or text-encoder safetensors file) as a GGUF file of `qtype` at `dst`."""
    import gguf

    if qtype not in GGUF_TYPES:
        raise AnimaError(f"the gguf package cannot write {qtype}; choose one of {', '.join(GGUF_TYPES)}")
    tensors, kind = _source(src)
    p = kind.prefix
    arch = "cosmos" if kind.kind == file_kinds.DIT else "qwen3"
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    counts: dict[str, int] = {}
    for key, t in tensors.items():
        if not key.startswith(p) or key.endswith("lm_head.weight"):
            continue
        name = key[len(p) :]
        name = name if kind.kind == file_kinds.DIT else _llama_name(name)
        target = _gguf_type(name, t, qtype)
        data = gguf.quants.quantize(t.float().numpy(), gguf.GGMLQuantizationType[target])
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[target])
        counts[target] = counts.get(target, 0) + 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    report(f"wrote {dst} ({arch}: " + ", ".join(f"{n} {q}" for q, n in counts.items()) + ")")
    return dst


def write_8bit(src: Path, dst: Path, fmt: str, report: Callable[[str], None] = print) -> Path:
    """Write `src` with the DiT blocks' projections in 8 bits, in ComfyUI's comfy_quant layout."""
    if fmt not in EIGHT_BIT:
        raise AnimaError(f"unknown 8-bit format {fmt!r}; choose int8 or fp8")
    tensors, kind = _source(src)
    if kind.kind != file_kinds.DIT:
        raise AnimaError(f"{src}: 8-bit files are written for the DiT; this is {kind.description}")
    out: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    for key, t in tensors.items():
        layer = key[: -len(".weight")]
        if key.endswith(".weight") and any(s in layer + "." for s in _EIGHT_BIT_LAYERS) and t.ndim == 2:
            q, scale = quantize_weight(t, fmt, per_channel=fmt == "int8")
            cfg = (
                {"format": "int8_tensorwise", "per_row": True}
                if fmt == "int8"
                else {"format": "float8_e4m3fn"}
            )
            out[key] = q
            out[f"{layer}.weight_scale"] = scale if fmt == "int8" else scale.reshape(())
            out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps(cfg).encode()), dtype=torch.uint8)
            layers[layer] = cfg
        else:
            out[key] = t
    meta = {"format": "pt", "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    save(out, dst, metadata=meta)
    report(f"wrote {dst} ({len(layers)} layers in {fmt}, the rest unchanged)")
    return dst


def convert(src: str | Path, dst: str | Path, target: str, report: Callable[[str], None] = print) -> Path:
    """`target`: gguf-f16, gguf-bf16, gguf-q8_0, gguf-q5_0, gguf-q5_1, gguf-q4_0, gguf-q4_1, int8, fp8."""
    src, dst = Path(src), Path(dst)
    if target not in TARGETS:
        raise AnimaError(f"unknown conversion target {target!r}; choose one of {', '.join(TARGETS)}",
                         setting="to")  # fmt: skip
    if src.resolve() == dst.resolve():
        raise AnimaError(f"{dst}: the output would overwrite the input")
    if target.startswith("gguf-"):
        return write_gguf(src, dst, target[len("gguf-") :].upper(), report)
    return write_8bit(src, dst, target, report)
