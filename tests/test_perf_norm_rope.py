"""The DiT's QK norm + RoPE pass without autograd (`_norm_rope_inference`): the autograd path's numbers,
whole or in token chunks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anima.model import dit_attention
from anima.model.dit_attention import _norm_rope, rope_tables


def _case(dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # q as the fused projection gives it: a strided view of a wider [B, L, 3 * H * hd] product
    qkv = torch.randn(2, 40, 3 * 4 * 16, generator=g).to(dtype)
    q = qkv[..., : 4 * 16].unflatten(-1, (4, 16))
    norm = nn.RMSNorm(16).to(dtype)
    nn.init.normal_(norm.weight, generator=g)
    cos, sin = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    return qkv, q, norm, (cos, sin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tables", ["halves", "tables", "none"])
@pytest.mark.parametrize("rows", [16, 64])  # 40 tokens: chunks of 16, 16 and 8; one chunk
def test_inference_pass_equals_the_autograd_pass_bit_for_bit(
    dtype: torch.dtype, tables: str, rows: int, monkeypatch
) -> None:
    monkeypatch.setattr(dit_attention, "CPU_NORM_ROPE_ROWS", rows)
    qkv, q, norm, (cos, sin) = _case(dtype)
    rope = {"halves": (cos, sin), "tables": rope_tables(cos, sin), "none": None}[tables]
    before = qkv.clone()
    with torch.enable_grad():
        want = _norm_rope(q, norm, rope)
    with torch.no_grad():
        got = _norm_rope(q, norm, rope)
    assert got.shape == want.shape == (2, 4, 40, 16) and got.dtype == dtype
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(qkv, before, atol=0, rtol=0)  # the caller's projection is untouched


def test_rotation_is_the_split_half_rope() -> None:
    # Pins the convention independently of both code paths: pairs (i, i + hd/2) rotate by the angle.
    _, q, norm, (cos, sin) = _case(torch.float32, seed=1)
    nn.init.ones_(norm.weight)
    with torch.no_grad():
        got = _norm_rope(q, norm, (cos, sin)).transpose(1, 2)
    x = q / q.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
    lo, hi = x[..., :8], x[..., 8:]
    c, s = cos[:, None], sin[:, None]
    want = torch.cat([lo * c - hi * s, hi * c + lo * s], dim=-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
