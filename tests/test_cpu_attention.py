"""Attention as float32 oneDNN products (`anima.runtime.cpu_attention`): the same softmax attention as
torch's kernel, in float32 whatever the inputs' dtype, and taken only for the calls it means."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from anima.runtime import cpu_attention, cpu_gemm
from anima.runtime.cpu_gemm import OneDNNProducts

pytestmark = pytest.mark.skipif(not cpu_gemm.onednn_available(), reason="this torch has no oneDNN")
FLASH_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH_OP = "aten::_scaled_dot_product_attention_math"
ONEDNN_OP = "mkldnn::_linear_pointwise"


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def _qkv(dtype: torch.dtype, lq: int = 40, lk: int = 24, dv: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    # q as the DiT makes it: [B, L, H, D] transposed to [B, H, L, D], not contiguous
    q = (torch.randn(2, lq, 3, 32, generator=g) * 2).to(dtype).transpose(1, 2)
    k = (torch.randn(2, 3, lk, 32, generator=g) * 2).to(dtype)
    v = torch.randn(2, 3, lk, dv, generator=g).to(dtype)
    return q, k, v


def _exact(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_it_computes_softmax_attention_in_float32(monkeypatch, dtype) -> None:
    q, k, v = _qkv(dtype)
    whole = cpu_attention.attention(q, k, v)
    monkeypatch.setattr(cpu_attention, "SCORE_BYTES", 4 * 24 * 7)  # 64 rows, 40 queries: one block
    assert torch.equal(cpu_attention.attention(q, k, v), whole)
    monkeypatch.setattr(cpu_attention, "SCORE_BYTES", 1)  # at least 64 rows a block
    q, k, v = _qkv(dtype, lq=150)  # three blocks of 64, the last one short
    ours = cpu_attention.attention(q, k, v)
    assert ours.dtype == dtype and ours.shape == (2, 3, 150, 16)
    exact = _exact(q, k, v)
    err = (ours.double() - exact).abs().max().item()
    theirs = (F.scaled_dot_product_attention(q, k, v).double() - exact).abs().max().item()
    if dtype == torch.float32:
        assert err < 1e-5
    else:  # float32 scores and probabilities; only the result is rounded to bf16
        assert err <= exact.abs().max().item() * 2**-8 and err <= theirs


@torch.no_grad()
def test_the_mode_takes_plain_calls_of_big_heads_only(monkeypatch) -> None:
    q, k, v = _qkv(torch.float32)
    with OneDNNProducts(attention=True):  # 40 x 24 x 32: too small to gain
        assert ONEDNN_OP not in _ops(lambda: F.scaled_dot_product_attention(q, k, v))
    big = [torch.zeros(1, 2, 384, 128)] * 3
    assert cpu_attention.takes(*big, None, 0.0, False, None, False)
    assert not cpu_attention.takes(*(t[:, :, :320] for t in big), None, 0.0, False, None, False)
    monkeypatch.setattr(cpu_attention, "MIN_HEAD_WORK", 0)
    with OneDNNProducts(attention=True):
        ops = _ops(lambda: F.scaled_dot_product_attention(q, k, v))
        assert ONEDNN_OP in ops and not {FLASH_OP, MATH_OP} & ops
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), _exact(q, k, v).float())
        mask = torch.zeros(40, 24)
        for kw in ({"attn_mask": mask}, {"is_causal": True}, {"scale": 0.5}):
            assert ONEDNN_OP not in _ops(lambda kw=kw: F.scaled_dot_product_attention(q, k, v, **kw))
        with sdpa_kernel(SDPBackend.MATH):  # anima's "math" backend keeps the reference kernel
            assert ONEDNN_OP not in _ops(lambda: F.scaled_dot_product_attention(q, k, v))
        half = [t.half() for t in (q, k, v)]
        assert ONEDNN_OP not in _ops(lambda: F.scaled_dot_product_attention(*half))
        with torch.enable_grad():
            qg = q.detach().requires_grad_(True)
            F.scaled_dot_product_attention(qg, k, v).sum().backward()  # training keeps torch's kernel
            assert qg.grad is not None
    with OneDNNProducts(attention=False):
        assert ONEDNN_OP not in _ops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert ONEDNN_OP not in _ops(lambda: F.scaled_dot_product_attention(q, k, v))  # nothing left on
