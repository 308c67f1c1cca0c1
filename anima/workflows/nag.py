"""Normalized attention guidance (NAG) on the DiT cross-attention: a negative prompt at CFG 1.

NAG (Chen et al. 2025, arXiv:2505.21179) guides in attention space instead of output space. In
every cross-attention layer the image queries attend to the positive context and to the negative
one; with Z+ and Z- the two attention outputs (heads merged, before the output projection):

    Z~ = scale * Z+ - (scale - 1) * Z-                         extrapolate away from the negative
    Z^ = Z~ * min(r, tau) / r,  r = |Z~|_1 / |Z+|_1 per token    cap the feature norm growth
    Z  = alpha * Z^ + (1 - alpha) * Z+                         blend back

and Z goes through the layer's output projection. Defaults (scale 5, tau 2.5, alpha 0.25) are the
paper's DiT settings. The queries are computed once and the negative keys/values once per run, so
the cost is one extra attention per block, far less than the second forward of CFG.

`nag_attention(dit, control)` swaps each block's ``cross_attn`` submodule for a `NagCrossAttention`
wrapping it, and puts the originals back on exit (also on errors). Nothing global is patched; a
`NagControl` owned by the run says whether the current forward is guided (the cond pass) and with
which negative context.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from anima.model.attention import attention


def nag_combine(
    z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float, tau: float, alpha: float
) -> torch.Tensor:
    """The NAG formula on attention outputs [..., features] (L1 norms over the last axis)."""
    guided = z_pos * scale - z_neg * (scale - 1.0)
    norm_pos = z_pos.norm(p=1, dim=-1, keepdim=True).clamp_min(1e-6)
    norm_guided = guided.norm(p=1, dim=-1, keepdim=True).clamp_min(1e-6)
    ratio = norm_guided / norm_pos
    guided = guided * (torch.clamp(ratio, max=tau) / ratio)
    return guided * alpha + z_pos * (1.0 - alpha)


class NagControl:
    """Per-run NAG parameters, and the negative context of the forward running now (None: plain).

    Only `guiding` sets the negative, for the duration of one guided (cond) forward."""

    def __init__(self, scale: float = 5.0, tau: float = 2.5, alpha: float = 0.25) -> None:
        self.scale, self.tau, self.alpha = scale, tau, alpha
        self._negative: torch.Tensor | None = None

    @property
    def negative(self) -> torch.Tensor | None:
        """[1, L, C] on the DiT's device, in its compute dtype, while a guided forward runs."""
        return self._negative

    @contextmanager
    def guiding(self, negative: torch.Tensor) -> Iterator[None]:
        self._negative = negative
        try:
            yield
        finally:
            self._negative = None


class NagCrossAttention(nn.Module):
    """Wraps one DiT `Attention` used as cross-attention; NAG when the control says so."""

    def __init__(self, inner: nn.Module, control: NagControl) -> None:
        super().__init__()
        self.inner = inner
        self.control = control
        self._kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _keys_values(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values [B, H, L, hd] of a context, as the wrapped layer computes them."""
        return self.inner.project_kv(src)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        c = self.control
        if c.negative is None or context is None or rope is not None:
            return self.inner(x, context, rope)
        a = self.inner
        backend = getattr(a, "attention_backend", "sdpa")
        q = a.q_norm(a.q_proj(x).unflatten(-1, (a.num_heads, a.head_dim))).transpose(1, 2)
        k_pos, v_pos = self._keys_values(context)
        key = id(c.negative)
        if key not in self._kv:  # the negative context is fixed for the run: project it once
            self._kv[key] = self._keys_values(c.negative.to(x.dtype))
        k_neg, v_neg = self._kv[key]
        b = x.shape[0]
        z_pos = attention(q, k_pos, v_pos, backend).transpose(1, 2).flatten(2)
        k_neg, v_neg = k_neg.expand(b, -1, -1, -1), v_neg.expand(b, -1, -1, -1)
        z_neg = attention(q, k_neg, v_neg, backend).transpose(1, 2).flatten(2)
        z = nag_combine(z_pos, z_neg, c.scale, c.tau, c.alpha)
        return a.output_proj(z.to(x.dtype))


@contextmanager
def nag_attention(dit: nn.Module, control: NagControl) -> Iterator[NagControl]:
    """Within the block, every ``dit.blocks[i].cross_attn`` is NAG-wrapped; restored afterwards."""
    blocks = list(dit.blocks)
    originals = [blk.cross_attn for blk in blocks]
    try:
        for blk, inner in zip(blocks, originals, strict=True):
            blk.cross_attn = NagCrossAttention(inner, control)
        yield control
    finally:
        for blk, inner in zip(blocks, originals, strict=True):
            blk.cross_attn = inner
