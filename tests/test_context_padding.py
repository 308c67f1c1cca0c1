"""The zero padding of a DiT context as one shared cross-attention key (`ContextKV`).

Every context is zero-padded to 512 rows and the padding takes part in the softmax (anima-spec §3.3),
so it cannot be dropped; but all zero rows project to the same key and value, so one key whose score
carries log(count) is the same maths. These tests pin that equality (fp32 and bf16), that the count
matters, that a wrapper mapping zero elsewhere is honoured, and what the cache holds.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from anima.model.attention import attention
from anima.model.dit_attention import Attention, ContextKV, zero_tail

WIDTH, CTX, HEADS, HD = 64, 32, 4, 16


def _layer(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    layer = Attention(WIDTH, CTX, HEADS, HD)
    for norm in (layer.q_norm, layer.k_norm):
        nn.init.uniform_(norm.weight, 0.5, 1.5)
    return layer.eval()


def _context(rows: tuple[int, ...], total: int = 512) -> torch.Tensor:
    """[B, total, CTX]: item i has `rows[i]` prompt rows, then zeros (as `pad_context` makes them)."""
    g = torch.Generator().manual_seed(1)
    out = torch.zeros(len(rows), total, CTX)
    for i, n in enumerate(rows):
        out[i, :n] = torch.randn(n, CTX, generator=g)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def test_zero_tail_counts_rows_zero_in_every_item():
    ctx = _context((40, 17))
    assert zero_tail(ctx) == 512 - 40
    assert zero_tail(ctx[1:]) == 512 - 17
    assert zero_tail(_context((512,))) == 0
    assert zero_tail(torch.zeros(2, 512, CTX)) == 512
    ctx[0, 300, 5] = 1e-30  # one tiny non-zero value keeps its row and every row before it
    assert zero_tail(ctx) == 511 - 300


@torch.no_grad()
def test_shared_key_counts_the_padding_rows():
    layer = _layer()
    kv = layer.context_kv(_context((40, 17)))
    assert isinstance(kv, ContextKV)
    assert kv.k.shape == kv.v.shape == (2, HEADS, 41, HD)  # 40 rows + the shared one, not 512
    assert kv.bias.shape == (1, 1, 1, 41) and kv.bias.dtype == torch.float32
    assert torch.equal(kv.bias[..., :40], torch.zeros(1, 1, 1, 40))
    assert kv.bias[..., 40].item() == pytest.approx(math.log(512 - 40))
    # Nothing to share: the plain keys, no bias.
    full = layer.context_kv(_context((512, 511)))
    assert full.bias is None and full.k.shape[2] == 512


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@torch.no_grad()
def test_shared_key_equals_attending_every_padding_row(dtype, tol):
    layer = _layer().to(dtype)
    ctx = _context((40, 17)).to(dtype)
    x = torch.randn(2, 64, WIDTH, generator=torch.Generator().manual_seed(2)).to(dtype)
    plain = layer(x, ctx)  # projects all 512 rows, no bias
    kv = layer.context_kv(ctx)
    assert _rel(layer(x, ctx, kv=kv), plain) < tol
    # The count matters: one padding key at weight 1 (bias 0) is a different attention.
    uncounted = layer(x, ctx, kv=ContextKV(kv.k, kv.v, torch.zeros_like(kv.bias)))
    assert _rel(uncounted, plain) > 10 * tol


class _Offset(nn.Module):
    """A wrapper (a LoRA with a bias diff, say) under which a zero row no longer projects to zero."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.offset = nn.Parameter(torch.linspace(-1, 1, base.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.offset.to(x.dtype)


@torch.no_grad()
def test_shared_key_is_projected_by_the_live_layers():
    layer = _layer()
    layer.k_proj, layer.v_proj = _Offset(layer.k_proj), _Offset(layer.v_proj)
    ctx = _context((40, 17))
    x = torch.randn(2, 64, WIDTH, generator=torch.Generator().manual_seed(3))
    kv = layer.context_kv(ctx)
    assert kv.v[:, :, -1].abs().max() > 0.5  # the shared row's value is the wrapper's offset
    assert _rel(layer(x, ctx, kv=kv), layer(x, ctx)) < 1e-5


def test_bias_runs_in_float32_whatever_the_inputs():
    """log(472) = 6.157 rounds to 6.156 in bf16: 0.1% on the weight of 472 rows (and 1% at worse
    counts). The biased attention computes in fp32 and rounds only its output."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 8, HD, generator=g) for _ in range(3))
    bias = torch.zeros(1, 1, 1, 8)
    bias[..., -1] = math.log(472)
    ref = attention(q, k, v, bias=bias)
    got = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias=bias)
    assert got.dtype == torch.bfloat16
    exact = attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), bias=bias)
    assert torch.equal(got, exact.bfloat16())
    assert (got.float() - ref).abs().max() < 0.05
    torch.testing.assert_close(attention(q, k, v, "math", bias=bias), ref, rtol=1e-5, atol=1e-6)
