"""8-bit weight storage for the DiT: int8 or fp8 (e4m3) weights with fp32 scales, dequantised on the fly.

For GPUs where memory, not compute, is the limit (``--weights int8|fp8``): the 1.76 B parameters of
the blocks' attention and MLP projections take 1 byte each instead of 2, the rest of the model stays in
the compute dtype. Each forward dequantises the weight to the compute dtype and runs a normal matmul,
so the numbers are those of a bf16 model whose weights were rounded to 8 bits:

- int8: symmetric, round-to-nearest, scale = amax / 127 per output channel (or per tensor).
- fp8: ``float8_e4m3fn`` (3 mantissa bits), scale = amax / 448 per output channel (or per tensor).

Measured against bf16 on the tiny fixture (tests/test_quant.py): int8 per-channel changes the velocity
by 1.3% of its max (bf16 itself is 0.9% away from fp32), fp8 by 4.4%. Quantise after the model has its
final device and dtype (``.to(float16)`` would also convert the fp8 buffers). On CPUs the
dequantisation costs time (the matmul itself is bf16); it is a memory option, not a speed option.

The AdaLN modulations, embedders and final layer are left alone: they are 9% of the weights and the
most sensitive to rounding. Quantisation is applied after loading (`quantize_dit`) and replaces the
``nn.Linear`` modules in place under the same names, so LoRA wrappers find the same module paths
(a wrapper that needs the dense weight calls `QuantLinear.dequantize()`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anima.errors import AnimaError

FORMATS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QMAX = {"int8": 127.0, "fp8": 448.0}
# The projections inside each block that are quantised (checkpoint names, relative to the block).
BLOCK_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj",
    "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj",
    "mlp.layer1", "mlp.layer2",
)  # fmt: skip


def quantize_weight(w: torch.Tensor, fmt: str, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float weight -> (8-bit weight, fp32 scale [out, 1] or [1, 1]); w ~= q * scale."""
    if fmt not in FORMATS:
        raise AnimaError(f"unknown weight format '{fmt}'; choose int8 or fp8")
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1, keepdim=True) if per_channel else wf.abs().amax().reshape(1, 1)
    scale = (amax / _QMAX[fmt]).clamp_min(1e-12)
    scaled = wf / scale
    if fmt == "int8":
        q = scaled.round_().clamp_(-127, 127).to(torch.int8)
    else:
        q = scaled.clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, scale


class QuantLinear(nn.Module):
    """A bias-free Linear whose weight is stored in 8 bits (buffers ``weight`` and ``scale``)."""

    def __init__(
        self, weight: torch.Tensor, scale: torch.Tensor, fmt: str, compute_dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.fmt = fmt
        self.compute_dtype = compute_dtype  # read by anima.model.dit.module_dtype
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, per_channel: bool = True) -> QuantLinear:
        if linear.bias is not None:
            raise AnimaError("QuantLinear supports bias-free layers only (the Anima DiT has no biases)")
        q, scale = quantize_weight(linear.weight, fmt, per_channel)
        return cls(q, scale.to(linear.weight.device), fmt, linear.weight.dtype)

    def dequantize(self) -> torch.Tensor:
        """The dense [out, in] weight in the compute dtype."""
        return self.weight.to(self.compute_dtype) * self.scale.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        rows = x.numel() // max(x.shape[-1], 1)
        if self.scale.shape[0] > 1 and rows < self.in_features:
            # Few tokens: scaling the [rows, out] output is cheaper than scaling the [out, in] weight.
            return F.linear(x, self.weight.to(self.compute_dtype)) * self.scale[:, 0].to(self.compute_dtype)
        return F.linear(x, self.dequantize())

    def extra_repr(self) -> str:
        per = "channel" if self.scale.shape[0] > 1 else "tensor"
        shape = f"{self.in_features}, {self.out_features}"
        return f"{shape}, fmt={self.fmt}, per={per}, compute={self.compute_dtype}"


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
