"""Scaled dot-product attention used by every Anima model.

One plain function so that a different backend (flash, sage, chunked) can later be swapped in at a
single place. No masks: neither the DiT nor the adapter uses one (spec §2.6, §3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention with scale 1/sqrt(head_dim) and no mask.

    q: [B, heads, Lq, head_dim]; k, v: [B, heads, Lk, head_dim]. Returns [B, heads, Lq, head_dim].
    """
    return F.scaled_dot_product_attention(q, k, v)
