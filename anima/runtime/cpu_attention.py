"""Softmax attention on a CPU as float32 oneDNN products, for CPUs where torch's flash kernel is slow.

Why: torch's CPU flash attention (what ``F.scaled_dot_product_attention`` runs there) multiplies its
small blocks with ``cpublas::gemm``: MKL's sgemm for float32 and, for bf16, oneDNN called block by
block (it packs blocks for one big call only on AMX CPUs). Measured 2026-12-08 on a 2-core AMD EPYC
Zen 5 (ATen AVX512, avx512_bf16, no AMX; torch 2.13), the DiT's self-attention at 512x512 with CFG
(q, k, v [2, 16, 1024, 128]) took 84-89 ms in bf16 and in float32 (about 200 GFLOP/s), and this
function 54-61 ms (bf16) / 49-54 ms (float32); at 512 keys 42-45 against 26 ms. oneDNN's float32
products run there at 440-490 GFLOP/s against MKL's 210-225 (`anima.runtime.cpu_gemm`). Small heads
lose to the per-head overhead: at 256 queries and keys (the DiT at 256x256) 7.1-7.3 against 6.1 ms,
at 384 10.4-11.2 against 13.5-13.7 ms, so only heads of `MIN_HEAD_WORK` or more are taken. Held to
AVX2 on the same machine (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``) the two were even
(1024 queries 86 against 88 ms, 384 14.5 against 13.5 ms), so AVX2 CPUs keep torch's kernel.

How: for each (batch, head), whole rows of scores at once, ``softmax(q k^T / sqrt(d)) v`` in float32
whatever the inputs' dtype (so bf16 inputs get float32 scores and probabilities, more exact than the
flash kernel's bf16 rounding: 6e-7 against 1e-3 from a float64 reference on random inputs), `rows`
queries at a time so a block of scores stays near the cache. The result is cast back to q's dtype.
Not the online softmax of the flash kernel: the same maths, float32 rounding in another order.
"""

from __future__ import annotations

from typing import Any

import torch

SCORE_BYTES = 4 << 20  # one block of float32 scores: 1024 x 1024 here, a few MB of L2 + L3
MIN_HEAD_WORK = 1 << 24  # queries x keys x head dim of one head: 320 x 320 x 128 is under, 384^2 x 128 over


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def takes(q: Any, k: Any, v: Any, mask: Any, dropout: float, causal: bool, scale: Any, gqa: bool) -> bool:
    """Whether `attention` computes this ``scaled_dot_product_attention`` call exactly as meant (CPU
    float32 / bf16 tensors [B, heads, L, D] of one shape family, no mask, dropout, causality,
    custom scale or grouped heads) and its heads are big enough to gain (`MIN_HEAD_WORK`)."""
    tensors = (q, k, v)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return False
    if mask is not None or dropout != 0.0 or causal or scale is not None or gqa:
        return False
    return (
        all(t.device.type == "cpu" and t.dtype == q.dtype and t.dim() == 4 for t in tensors)
        and q.dtype in (torch.float32, torch.bfloat16)
        and q.shape[:2] == k.shape[:2] == v.shape[:2] and k.shape[2] == v.shape[2]
        and q.shape[3] == k.shape[3] and q.shape[2] * k.shape[2] * q.shape[3] >= max(MIN_HEAD_WORK, 1)
    )  # fmt: skip


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, H, Lq, D], k [B, H, Lk, D], v [B, H, Lk, Dv], in float32
    oneDNN products; returns [B, H, Lq, Dv] in q's dtype."""
    batch, heads, lq, d = q.shape
    lk = k.shape[2]
    rows = max(64, SCORE_BYTES // (4 * lk))
    out = torch.empty(batch, heads, lq, v.shape[3], dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            qh = q[b, h].float() * d**-0.5
            kh = k[b, h].float().contiguous()  # oneDNN's weight operand: 2-D and contiguous
            vt = v[b, h].float().t().contiguous()
            for start in range(0, lq, rows):
                scores = _linear(qh[start : start + rows], kh)
                torch.softmax(scores, dim=-1, out=scores)
                out[b, h, start : start + rows] = _linear(scores, vt)
    return out
