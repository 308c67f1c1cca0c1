"""Layers whose weight stays in a GGML block format (GGUF files) and is dequantised per call.

A Q4_K DiT then needs about a quarter of the memory of bf16: the raw blocks are the only copy
(memory-mapped from the file on a CPU, moved as bytes to a GPU), and the dense weight of one layer
exists only while its matmul runs. The dequantisation is `anima.model.ggml` (torch ops, any device).

`GGMLLinear` replaces an ``nn.Linear`` (bias-free in the DiT; the text encoder's and adapter's
projections too); `GGMLEmbedding` a token embedding, dequantising only the rows it looks up (each row
is whole blocks), so a quantised 151936-row Qwen3 vocabulary is never expanded. Both keep the layer's
``in_features``/``out_features`` and a ``compute_dtype``, so LoRA wrappers (`anima.lora.apply`) and the
DiT's dtype queries treat them like any replaced layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anima.model import ggml


class GGMLLinear(nn.Module):
    """``y = x Wᵀ (+ b)`` with W held as raw GGML blocks (``weight``: uint8 [out, row bytes])."""

    def __init__(
        self, weight: torch.Tensor, qtype: str, in_features: int, compute_dtype: torch.dtype, bias=None
    ) -> None:
        super().__init__()
        self.qtype = qtype
        self.out_features, self.in_features = weight.shape[0], in_features
        self.compute_dtype = compute_dtype
        if weight.dtype != torch.uint8 or weight.shape[1] != ggml.row_bytes(qtype, in_features):
            raise ValueError(
                f"{qtype} blocks of shape {tuple(weight.shape)} do not hold {in_features} columns"
            )
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense [out, in] weight (compute dtype unless `dtype` is given)."""
        shape = (self.out_features, self.in_features)
        return ggml.dequantize(self.weight, self.qtype, shape, dtype or self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantize(), bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, qtype={self.qtype}, compute={self.compute_dtype}"


class GGMLEmbedding(nn.Module):
    """A token embedding with its table in GGML blocks (``weight``: uint8 [vocab, row bytes])."""

    def __init__(self, weight: torch.Tensor, qtype: str, embedding_dim: int, compute_dtype: torch.dtype):
        super().__init__()
        self.qtype = qtype
        self.num_embeddings, self.embedding_dim = weight.shape[0], embedding_dim
        self.compute_dtype = compute_dtype
        if weight.dtype != torch.uint8 or weight.shape[1] != ggml.row_bytes(qtype, embedding_dim):
            raise ValueError(
                f"{qtype} blocks of shape {tuple(weight.shape)} do not hold {embedding_dim} columns"
            )
        self.register_buffer("weight", weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids.reshape(-1)]
        out = ggml.dequantize(rows, self.qtype, (rows.shape[0], self.embedding_dim), self.compute_dtype)
        return out.reshape(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, qtype={self.qtype}"
