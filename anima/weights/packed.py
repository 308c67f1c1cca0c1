"""Quantised tensors in a state dict, and putting them into a freshly built model as quantised layers.

A loader's state dict may hold, next to plain tensors, packed ones read from a quantised file:
`GGMLTensor` (GGUF blocks) and `Scaled8bit` (int8/fp8 weight + scales from a ComfyUI 8-bit file).
Each has the *logical* ``shape`` and ``dtype``-free `dequantize(dtype)`, so the strict key and shape
checks of `anima.weights.loading` treat them like any tensor. `install` then swaps the layer that owns
each packed weight for the layer that computes with it, without ever making a dense copy of it:

- an ``nn.Linear`` (or the text encoder's casting Linear) -> `GGMLLinear` / `QuantLinear`;
- the text encoder's ``nn.Embedding`` with GGML rows -> `GGMLEmbedding`;
- anything else (a norm weight quantised by stable-diffusion.cpp, a biased 8-bit Linear) is
  dequantised once at load time: such tensors are small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anima.model import ggml
from anima.model.ggml_modules import GGMLEmbedding, GGMLLinear
from anima.model.quant_linear import QuantLinear


@dataclass(frozen=True)
class GGMLTensor:
    """Raw GGML blocks (uint8 [rows, row bytes]) of a tensor of `shape` (torch order)."""

    data: torch.Tensor
    qtype: str
    shape: tuple[int, ...]

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return ggml.dequantize(self.data, self.qtype, self.shape, dtype)

    @property
    def label(self) -> str:
        return self.qtype


@dataclass(frozen=True)
class Scaled8bit:
    """An 8-bit [out, in] weight with its float32 scale (per tensor or per row) and options."""

    data: torch.Tensor
    scale: torch.Tensor
    fmt: str  # "int8", "fp8" (e4m3fn) or "fp8_e5m2"
    input_scale: torch.Tensor | None = None
    rotation: int = 0  # ConvRot group size

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def module(self, device: torch.device, compute_dtype: torch.dtype) -> QuantLinear:
        return QuantLinear(self.data.to(device), self.scale.to(device), self.fmt, compute_dtype,
                           input_scale=self.input_scale, rotation=self.rotation)  # fmt: skip

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.module(self.data.device, dtype).dequantize()

    @property
    def label(self) -> str:
        per = "row" if self.scale.numel() > 1 else "tensor"
        return f"{self.fmt}/{per}" + ("+convrot" if self.rotation else "")


Packed = GGMLTensor | Scaled8bit


def is_packed(v: object) -> bool:
    return isinstance(v, GGMLTensor | Scaled8bit)


def install(
    module: nn.Module,
    packed: dict[str, Packed],
    converted: dict[str, torch.Tensor],
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    embeddings: bool = False,
) -> dict[str, torch.Tensor]:
    """Swap the layers owning `packed` weights (state-dict keys ``<layer>.weight``) for quantised
    layers on `device` computing in `dtype` (float32 when None); -> the state-dict entries of the
    new layers (to load with the `converted` plain tensors, which supply their biases).

    `embeddings`: keep GGML embedding tables packed (the text encoder's 151936-row vocabulary, which
    it reads by lookup only); otherwise they are dequantised like other non-Linear tensors."""
    compute = dtype or torch.float32
    out: dict[str, torch.Tensor] = {}
    for key, p in packed.items():
        path, _, leaf = key.rpartition(".")
        owner = module.get_submodule(path) if path else module
        new: nn.Module | None = None
        if leaf == "weight" and isinstance(owner, nn.Linear):
            bias = converted.get(f"{path}.bias")
            if isinstance(p, GGMLTensor) and len(p.shape) == 2:
                new = GGMLLinear(p.data.to(device), p.qtype, p.shape[1], compute, bias=bias)
            elif isinstance(p, Scaled8bit) and bias is None:
                new = p.module(device, compute)
        elif (
            leaf == "weight" and embeddings and isinstance(owner, nn.Embedding) and isinstance(p, GGMLTensor)
        ):
            new = GGMLEmbedding(p.data.to(device), p.qtype, p.shape[1], compute)
        if new is None:
            out[key] = p.dequantize(compute).to(device)
            continue
        parent_path, _, attr = path.rpartition(".")
        setattr(module.get_submodule(parent_path) if parent_path else module, attr, new)
        out.update({f"{path}.{k}": v for k, v in new.state_dict().items()})
    return out
