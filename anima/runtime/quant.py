"""8-bit weight storage for the DiT: int8 or fp8 (e4m3) weights with fp32 scales, dequantised on the fly.

For GPUs where memory, not compute, is the limit (``--weights int8|fp8``): the 1.76 B parameters of
the blocks' attention and MLP projections take 1 byte each instead of 2, the rest of the model stays in
the compute dtype. On GPUs with int8 (compute capability 7.5+) or fp8 (8.9+) tensor cores the
matmul runs in 8 bits with dynamically quantised activations; elsewhere each forward dequantises the
weight and runs a normal matmul, so the numbers are those of a bf16 model whose weights were rounded
to 8 bits:

- int8: symmetric, round-to-nearest, scale = amax / 127 per output channel (or per tensor).
- fp8: ``float8_e4m3fn`` (3 mantissa bits), scale = amax / 448 per output channel (or per tensor).

The module itself (`QuantLinear`) and the matmul it runs (int8 or fp8 tensor cores where the GPU has
them, else dequantise + matmul) live in `anima.model.quant_linear` and `anima.model.qmatmul`; this
module decides what to quantise. Measured against bf16 on the tiny fixture (tests/test_quant.py): int8
per-channel changes the velocity by 1.3% of its max (bf16 itself is 0.9% away from fp32), fp8 by
4.4%. Quantise after the model has its final device and dtype (``.to(float16)`` would also convert
the fp8 buffers). On CPUs the dequantisation costs time (the matmul itself is bf16); there it is a
memory option, not a speed option.

The AdaLN modulations, embedders and final layer are left alone: they are 9% of the weights and the
most sensitive to rounding. Quantisation is applied after loading (`quantize_dit`) and replaces the
``nn.Linear`` modules in place under the same names, so LoRA wrappers find the same module paths
(a wrapper that needs the dense weight calls `QuantLinear.dequantize()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anima.errors import AnimaError
from anima.model import qmatmul
from anima.model.ggml_modules import GGMLLinear
from anima.model.quant_linear import QuantLinear, quantize_weight

FORMATS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}  # what `quantize_dit` writes
# The projections inside each block that are quantised (checkpoint names, relative to the block).
BLOCK_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj",
    "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj",
    "mlp.layer1", "mlp.layer2",
)  # fmt: skip
__all__ = ["BLOCK_LINEARS", "FORMATS", "QuantLinear", "QuantReport", "kernel_note", "loaded_note",
           "quantize_dit", "quantize_weight"]  # fmt: skip


def kernel_note(fmt: str, device: torch.device) -> str:
    """Which matmul 8-bit weights of `fmt` get on `device` (`anima.model.qmatmul`), for the notes."""
    kernel = qmatmul.choose_kernel(fmt, device.type, qmatmul.device_capability(device))
    return qmatmul.KERNEL_NAMES[kernel]


def loaded_note(dit: nn.Module, device: torch.device) -> str | None:
    """What a quantised DiT file brought (GGUF blocks, 8-bit layers) and how its 8-bit layers multiply."""
    counts: dict[str, int] = {}
    fmts = set()
    for m in dit.modules():
        if isinstance(m, GGMLLinear):
            counts[f"GGUF {m.qtype}"] = counts.get(f"GGUF {m.qtype}", 0) + 1
        elif isinstance(m, QuantLinear):
            counts[m.fmt] = counts.get(m.fmt, 0) + 1
            fmts.add(m.fmt)
    if not counts:
        return None
    text = "weights from the file: " + ", ".join(f"{n} layers {k}" for k, n in sorted(counts.items()))
    kernels = sorted({kernel_note(f, device) for f in fmts})
    return text + (f" ({'; '.join(kernels)})" if kernels else "")


@dataclass(frozen=True)
class QuantReport:
    fmt: str
    layers: int
    bytes_before: int
    bytes_after: int

    @property
    def saved_gb(self) -> float:
        return (self.bytes_before - self.bytes_after) / 2**30


def quantize_dit(dit: nn.Module, fmt: str, *, per_channel: bool = True) -> QuantReport:
    """Replace the blocks' plain attention/MLP ``nn.Linear`` layers by `QuantLinear` (in place).

    Layers already wrapped (a LoRA applied before quantisation) are left in the compute dtype; apply
    quantisation first, LoRAs second.
    """
    if fmt not in FORMATS:
        raise AnimaError(f"unknown weight format '{fmt}'; choose int8 or fp8")
    layers = before = after = 0
    for block in dit.blocks:
        for path in BLOCK_LINEARS:
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            layer = getattr(parent, name)
            if type(layer) is not nn.Linear:
                continue
            q = QuantLinear.from_linear(layer, fmt, per_channel)
            before += layer.weight.numel() * layer.weight.element_size()
            after += q.weight.numel() * q.weight.element_size() + q.scale.numel() * 4
            setattr(parent, name, q)
            layers += 1
    return QuantReport(fmt=fmt, layers=layers, bytes_before=before, bytes_after=after)
