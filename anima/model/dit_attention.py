"""The DiT's attention layer (self- and cross-attention share it) and its speed paths.

Split out of `anima.model.dit` to keep one concept per module; names and behaviour are those of the
checkpoint (``q_proj``, ``k_proj``, ``v_proj``, ``output_proj``, ``q_norm``, ``k_norm``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anima.model.attention import attention

_EPS = 1e-6
KV = tuple[torch.Tensor, torch.Tensor]
MIN_SHARED_ROWS = 2  # fewer trailing zero rows than this: nothing to gain from one shared key


class ContextKV(NamedTuple):
    """Cross-attention keys/values of a fixed context (`Attention.context_kv`).

    The context is zero-padded to 512 rows (anima-spec §3.3) and the padding takes part in the
    softmax. Every zero row projects to the same key and value (the projections and the QK norm work
    row by row), so the trailing zero rows are kept as *one* key whose softmax weight counts them:
    ``bias`` is 0 for each kept row and log(n) for that shared row. The same maths as 512 keys with
    ~10% of the K/V memory and projection work for a typical prompt (a 40-token prompt: 41 keys).
    """

    k: torch.Tensor  # [B, H, Lk, hd]
    v: torch.Tensor  # [B, H, Lk, hd]
    bias: torch.Tensor | None  # [1, 1, 1, Lk] float32, or None: every key stands for one row


def zero_tail(context: torch.Tensor) -> int:
    """How many trailing rows of a [B, L, C] context are zeros in every batch item."""
    nonzero = (context != 0).any(dim=2).any(dim=0).nonzero()
    return context.shape[1] - (int(nonzero[-1]) + 1 if len(nonzero) else 0)


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[L, hd/2] split-half (cos, sin) -> [L, 1, hd] (cat(cos, cos), cat(-sin, sin)) for `_norm_rope`.

    With these, rotating pairs (i, i + hd/2) is ``x * cos + swap_halves(x) * sin``: three passes over
    the activations instead of eight. Built once per forward (the tables are small).
    """
    return torch.cat([cos, cos], -1)[:, None], torch.cat([-sin, sin], -1)[:, None]


def _norm_rope(
    t: torch.Tensor, norm: nn.RMSNorm, rope: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Per-head RMSNorm, then split-half RoPE, in one fp32 pass: [B, L, H, hd] -> [B, H, L, hd] in t.dtype.

    The reference rounds to the compute dtype between the norm and the RoPE; in fp32 that is a no-op,
    in bf16/fp16 skipping it keeps one more bit (differences stay within one ulp of the output).
    """
    if not torch.is_grad_enabled():
        return _norm_rope_inference(t, norm, rope)
    tf = t.float()
    tf = tf * torch.rsqrt(tf.square().mean(-1, keepdim=True) + _EPS)
    tf = tf * norm.weight.float()
    if rope is not None:
        cos, sin = rope if rope[0].shape[-1] == t.shape[-1] else rope_tables(*rope)
        # roll(x, hd/2) as a concatenation of the swapped halves: the same numbers, and on CUDA the
        # roll kernel (index arithmetic per element) cost about 5% of a step.
        lo, hi = tf.chunk(2, dim=-1)
        tf = torch.addcmul(tf * cos, torch.cat([hi, lo], dim=-1), sin)
    return tf.to(t.dtype).transpose(1, 2)


CPU_NORM_ROPE_ROWS = 64  # tokens per chunk on a CPU: 2 x 64 x 16 heads x 128 x 4 B = 1 MB of fp32


def _norm_rope_inference(
    t: torch.Tensor, norm: nn.RMSNorm, rope: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """`_norm_rope` without autograd: the same operations in the same order (bit for bit; every
    token is normalised and rotated on its own), in place where autograd would forbid it, each
    rotated half written straight into its place instead of through a swapped copy, and on a CPU
    `CPU_NORM_ROPE_ROWS` tokens at a time so the fp32 passes stay in the core's cache.

    Why: these passes over [B, L, H, hd] fp32 activations were bound by memory, not arithmetic. At
    512x512 on 2 cores (3 calls per block): 7.2 ms a call as eight whole-tensor passes, 4.9 ms
    in place, 3.9 ms in chunks.
    """
    hd, length = t.shape[-1], t.shape[1]
    tables = None
    if rope is not None:
        tables = rope if rope[0].shape[-1] == hd else rope_tables(*rope)
    weight = norm.weight.float()
    rows = CPU_NORM_ROPE_ROWS if t.device.type == "cpu" else length  # one pass per kernel on a GPU
    if rows >= length:  # one chunk: no output buffer to copy through
        return _norm_rope_tokens(t, weight, tables).to(t.dtype).transpose(1, 2)
    out = torch.empty(t.shape, dtype=t.dtype, device=t.device)
    for i in range(0, length, rows):
        part = None if tables is None else (tables[0][i : i + rows], tables[1][i : i + rows])
        out[:, i : i + rows] = _norm_rope_tokens(t[:, i : i + rows], weight, part)
    return out.transpose(1, 2)


def _norm_rope_tokens(
    t: torch.Tensor, weight: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """[B, l, H, hd] tokens -> normalised and rotated, fp32 (`_norm_rope_inference`); `tables` are
    `rope_tables` rows for these tokens, or None for no RoPE."""
    tf = t.float()
    tf = tf * torch.rsqrt(tf.square().mean(-1, keepdim=True) + _EPS)  # a fresh tensor: ours to change
    tf.mul_(weight)
    if tables is None:
        return tf
    cos, sin = tables
    h = tf.shape[-1] // 2
    lo, hi = tf.chunk(2, dim=-1)
    rotated = torch.empty_like(tf)
    out_lo, out_hi = rotated.chunk(2, dim=-1)
    # The tables are (cat(cos, cos), cat(-sin, sin)): each half is x * cos + its partner * sin.
    torch.mul(lo, cos[..., :h], out=out_lo).addcmul_(hi, sin[..., :h])
    torch.mul(hi, cos[..., h:], out=out_hi).addcmul_(lo, sin[..., h:])
    return rotated


class Attention(nn.Module):
    """Multi-head attention with per-head QK RMSNorm; RoPE (split-half) when tables are given.

    Speed paths, each equal to the plain path (pinned by tests):
    - ``kv``: keys/values precomputed by `project_kv` for a fixed context (cross-attention K/V are
      the same at every sampling step).
    - fused q/k/v: after `fuse_qkv`, the three self-attention weights are views into one [3D, D]
      tensor and one matmul computes all three. Only while all three are plain ``nn.Linear`` whose
      weights are still those views; a wrapped or replaced projection (LoRA, quantisation) silently
      takes the three-matmul path.
    """

    def __init__(self, width: int, context_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(context_dim, width, bias=False)
        self.v_proj = nn.Linear(context_dim, width, bias=False)
        self.output_proj = nn.Linear(width, width, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=_EPS)
        self.k_norm = nn.RMSNorm(head_dim, eps=_EPS)
        self.attention_backend = "sdpa"  # a kernel name (see anima.model.attention), not a tensor

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H*hd] -> [B, L, H, hd]
        return t.unflatten(-1, (self.num_heads, self.head_dim))

    def project_kv(self, src: torch.Tensor) -> KV:
        """Normalised keys and values [B, H, L, hd] of `src` (no RoPE: used for cross-attention)."""
        k = _norm_rope(self._heads(self.k_proj(src)), self.k_norm, None)
        v = self._heads(self.v_proj(src)).transpose(1, 2)
        return k, v

    def context_kv(self, src: torch.Tensor) -> ContextKV:
        """`project_kv` of a fixed context with its trailing zero rows shared as one key (`ContextKV`).

        The shared row is projected through the live layers like any other (a LoRA or patch that
        maps zero to something else is honoured): only its count is implied.
        """
        pad = zero_tail(src)
        if pad < MIN_SHARED_ROWS:
            return ContextKV(*self.project_kv(src), None)
        keep = src.shape[1] - pad
        k, v = self.project_kv(src[:, : keep + 1])
        bias = torch.zeros(keep + 1, device=src.device, dtype=torch.float32)
        bias[-1] = math.log(pad)
        return ContextKV(k, v, bias.view(1, 1, 1, -1))

    def _fused_qkv_weight(self) -> torch.Tensor | None:
        """The [3D, D] weight q/k/v are views of, or None when they are not (any more)."""
        q, k, v = self.q_proj, self.k_proj, self.v_proj
        if not (type(q) is nn.Linear and type(k) is nn.Linear and type(v) is nn.Linear):
            return None
        wq, wk, wv = q.weight, k.weight, v.weight
        n = wq.numel()
        if not (wq.shape == wk.shape == wv.shape and wq.is_contiguous() and wk.is_contiguous()
                and wv.is_contiguous() and wq.dtype == wk.dtype == wv.dtype):  # fmt: skip
            return None
        if not (wq.untyped_storage().data_ptr() == wk.untyped_storage().data_ptr()
                == wv.untyped_storage().data_ptr()):  # fmt: skip
            return None
        start = wq.storage_offset()
        if wk.storage_offset() != start + n or wv.storage_offset() != start + 2 * n:
            return None
        rows, cols = wq.shape
        return wq.as_strided((3 * rows, cols), (cols, 1))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv: KV | ContextKV | None = None,
    ) -> torch.Tensor:
        """rope: (cos, sin) as [L, hd/2] (`Rope3D`) or as `rope_tables` output; applied to q and k.
        kv: precomputed keys/values (`project_kv` or `context_kv`) used instead of projecting."""
        fused = self._fused_qkv_weight() if context is None and kv is None else None
        if fused is not None:
            q, k, v = (self._heads(t) for t in F.linear(x, fused).chunk(3, dim=-1))
        else:
            q = self._heads(self.q_proj(x))
            if kv is None:
                src = x if context is None else context
                k, v = self._heads(self.k_proj(src)), self._heads(self.v_proj(src))
        q = _norm_rope(q, self.q_norm, rope)
        bias = None
        if kv is None:
            k, v = _norm_rope(k, self.k_norm, rope), v.transpose(1, 2)
        else:
            k, v = kv[0], kv[1]
            bias = kv.bias if isinstance(kv, ContextKV) else None
        out = attention(q, k, v, self.attention_backend, bias=bias)
        return self.output_proj(out.transpose(1, 2).flatten(2))


def fuse_qkv(attn: Attention) -> bool:
    """Make q/k/v weights views of one [3D, D] tensor (same values, names and state dict); True if done.

    A no-op (False) when the projections are not plain, same-shape, same-dtype ``nn.Linear``.
    """
    q, k, v = attn.q_proj, attn.k_proj, attn.v_proj
    if not (type(q) is nn.Linear and type(k) is nn.Linear and type(v) is nn.Linear):
        return False
    if not (q.weight.shape == k.weight.shape == v.weight.shape and q.weight.dtype == k.weight.dtype
            == v.weight.dtype and q.weight.device == k.weight.device == v.weight.device):  # fmt: skip
        return False
    if attn._fused_qkv_weight() is not None:
        return True
    fused = torch.cat([q.weight.detach(), k.weight.detach(), v.weight.detach()])
    for layer, part in zip((q, k, v), fused.chunk(3), strict=True):
        layer.weight = nn.Parameter(part, requires_grad=layer.weight.requires_grad)
    return True
