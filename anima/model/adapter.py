"""The Anima "LLM adapter": T5 token ids cross-attending to Qwen3 hidden states (anima-spec §3.3).

    x = embed(t5_ids)                                   # no input projection (target_dim == model_dim)
    for each block:
        x = x + SelfAttn(RMSNorm(x))                    # RoPE on q and k, target positions 0..Lt-1
        x = x + CrossAttn(RMSNorm(x), qwen_hidden)      # q: target positions, k: source positions 0..Ls-1
        x = x + Linear(GELU(Linear(RMSNorm(x))))        # MLP with biases
    out = RMSNorm(out_proj(x))                          # [B, Lt, model_dim]: one row per T5 token

Attention has no mask (as ComfyUI: a single prompt has no padding) and scale 1/sqrt(head_dim). Per-head
q/k RMSNorms come before the 1D rotate-half RoPE (theta 1e4), whose cos/sin are computed in fp32 and
rounded to the activation dtype. Attribute names equal the checkpoint keys under ``net.llm_adapter.``.
Prompt weights and the 512-row padding are not part of the module: see `anima.text.conditioning`.
"""

from __future__ import annotations

import torch
from torch import nn

from anima.model.attention import attention
from anima.model.config import AdapterConfig
from anima.model.rope import apply_rope_rotate_half, rope_1d

_EPS = 1e-6

Rope = tuple[torch.Tensor, torch.Tensor]


class AdapterAttention(nn.Module):
    """Multi-head attention with per-head RMSNorm on q and k (self-attention: pass x as `context`)."""

    def __init__(self, query_dim: int, context_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.q_proj = nn.Linear(query_dim, inner, bias=False)
        self.k_proj = nn.Linear(context_dim, inner, bias=False)
        self.v_proj = nn.Linear(context_dim, inner, bias=False)
        self.o_proj = nn.Linear(inner, query_dim, bias=False)
        self.q_norm = nn.RMSNorm(head_dim, eps=_EPS)
        self.k_norm = nn.RMSNorm(head_dim, eps=_EPS)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        # [B, L, heads*hd] -> [B, L, heads, hd]
        return t.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope_q: Rope, rope_k: Rope) -> torch.Tensor:
        # Head norms act on [B, L, heads, hd]; RoPE and attention on [B, heads, L, hd].
        q = self.q_norm(self._heads(self.q_proj(x))).transpose(1, 2)
        k = self.k_norm(self._heads(self.k_proj(context))).transpose(1, 2)
        v = self._heads(self.v_proj(context)).transpose(1, 2)
        out = attention(apply_rope_rotate_half(q, *rope_q), apply_rope_rotate_half(k, *rope_k), v)
        return self.o_proj(out.transpose(1, 2).flatten(2))


class AdapterBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the Qwen3 states, then a GELU MLP."""

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        d = cfg.model_dim
        self.norm_self_attn = nn.RMSNorm(d, eps=_EPS)
        self.self_attn = AdapterAttention(d, d, cfg.num_heads, cfg.head_dim)
        self.norm_cross_attn = nn.RMSNorm(d, eps=_EPS)
        self.cross_attn = AdapterAttention(d, cfg.source_dim, cfg.num_heads, cfg.head_dim)
        self.norm_mlp = nn.RMSNorm(d, eps=_EPS)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_hidden), nn.GELU(), nn.Linear(cfg.mlp_hidden, d))

    def forward(self, x: torch.Tensor, source: torch.Tensor, rope_t: Rope, rope_s: Rope) -> torch.Tensor:
        h = self.norm_self_attn(x)
        x = x + self.self_attn(h, h, rope_t, rope_t)
        x = x + self.cross_attn(self.norm_cross_attn(x), source, rope_t, rope_s)
        return x + self.mlp(self.norm_mlp(x))


class LLMAdapter(nn.Module):
    """forward(source_hidden [B, Ls, source_dim], target_ids [B, Lt]) -> [B, Lt, model_dim].

    Runs in the dtype of its parameters (the DiT compute dtype); the Qwen3 states are cast to it first,
    as the reference does.
    """

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.target_dim)
        self.blocks = nn.ModuleList(AdapterBlock(cfg) for _ in range(cfg.num_layers))
        self.out_proj = nn.Linear(cfg.model_dim, cfg.target_dim)
        self.norm = nn.RMSNorm(cfg.target_dim, eps=_EPS)

    def forward(self, source_hidden: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        dtype = self.embed.weight.dtype
        source = source_hidden.to(dtype)
        x = self.embed(target_ids)
        device = x.device
        hd = self.config.head_dim
        theta = self.config.rope_theta
        rope_t = rope_1d(torch.arange(x.shape[1], device=device), hd, theta)
        rope_s = rope_1d(torch.arange(source.shape[1], device=device), hd, theta)
        for block in self.blocks:
            x = block(x, source, rope_t, rope_s)
        return self.norm(self.out_proj(x))
