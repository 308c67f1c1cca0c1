"""The matrix-product floor of one sampling step: every matmul and attention of the DiT's shapes, as
bare torch calls, with nothing else (no norms, RoPE, activations, residual adds, casts).

One step = one DiT forward over the CFG batch of 2 (cond + uncond). Two floors are reported:
``full`` is every product of an uncached forward (what the issue's 4.8 s bf16 figure is); ``cached``
leaves out the cross-attention K/V projections of the context, which a run computes once per prompt,
not once per step. `context_len`: the context rows the cross-attention sees (512 for the padded
context; the paired bench passes the rows anima's shared-padding keys leave, `ContextKV`).

One block's weights are reused for all blocks: a block is ~138 MB in bf16, far beyond the caches, so
reuse does not flatter the timing.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from anima.model.config import DiTConfig


def _weights(cfg: DiTConfig, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    d, r, c = cfg.model_channels, cfg.adaln_lora_dim, cfg.crossattn_emb_channels
    g = torch.Generator().manual_seed(0)

    def w(o: int, i: int) -> torch.Tensor:
        return (torch.randn(o, i, generator=g) / i**0.5).to(device, dtype)

    return {
        "q": w(d, d), "k": w(d, d), "v": w(d, d), "o": w(d, d),
        "cq": w(d, d), "ck": w(d, c), "cv": w(d, c), "co": w(d, d),
        "m1": w(cfg.mlp_hidden, d), "m2": w(d, cfg.mlp_hidden),
        "a1": w(r, d), "a2": w(3 * d, r),
        "t1": w(d, d), "t2": w(3 * d, d), "patch": w(d, 68), "final": w(64, d), "fa2": w(2 * d, r),
    }  # fmt: skip


@torch.inference_mode()
def floor_step(
    cfg: DiTConfig, tokens: int, dtype: torch.dtype, *, batch: int = 2, context_len: int = 512,
    include_context_kv: bool = True, repeats: int = 2, device: torch.device | str = "cpu",
) -> float:  # fmt: skip
    """Seconds for the bare products of one DiT forward (best of `repeats`; on a GPU after one
    untimed warm-up, each timing ending in a synchronize)."""
    device = torch.device(device)
    wt = _weights(cfg, dtype, device)
    d, h, hd = cfg.model_channels, cfg.num_heads, cfg.head_dim
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, tokens, d, generator=gen).to(device, dtype)
    ctx = torch.randn(batch, context_len, cfg.crossattn_emb_channels, generator=gen).to(device, dtype)
    emb = torch.randn(batch, 1, d, generator=gen).to(device, dtype)
    ck = F.linear(ctx, wt["ck"]).unflatten(-1, (h, hd)).transpose(1, 2)
    cv = F.linear(ctx, wt["cv"]).unflatten(-1, (h, hd)).transpose(1, 2)
    patches = torch.randn(batch, tokens, 68, generator=gen).to(device, dtype)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (h, hd)).transpose(1, 2)

    def once() -> None:
        F.linear(patches, wt["patch"])
        F.linear(F.linear(emb, wt["t1"]), wt["t2"])
        for _ in range(cfg.num_blocks):
            for _mod in range(3):
                F.linear(F.linear(emb, wt["a1"]), wt["a2"])
            q, k, v = heads(F.linear(x, wt["q"])), heads(F.linear(x, wt["k"])), heads(F.linear(x, wt["v"]))
            F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2), wt["o"])
            q = heads(F.linear(x, wt["cq"]))
            if include_context_kv:
                k, v = heads(F.linear(ctx, wt["ck"])), heads(F.linear(ctx, wt["cv"]))
            else:
                k, v = ck, cv
            F.linear(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2), wt["co"])
            F.linear(F.linear(x, wt["m1"]), wt["m2"])
        F.linear(F.linear(emb, wt["a1"]), wt["fa2"])
        F.linear(x, wt["final"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        once()  # kernel selection and cuBLAS workspaces happen on the first call
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        once()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def forward_tflop(cfg: DiTConfig, tokens: int, *, batch: int = 1, context_len: int = 512) -> float:
    """Multiply-add FLOPs (x2) of one uncached DiT forward, in TFLOP (17.9 at 1024x1024, batch 1)."""
    d, c, m = cfg.model_channels, cfg.crossattn_emb_channels, cfg.mlp_hidden
    per_token = 2 * (4 * d * d + 2 * d * d + 2 * d * m)
    attn = 2 * 2 * tokens * (tokens + context_len) * d
    ctx_kv = 2 * 2 * context_len * c * d
    per_block = tokens * per_token + attn + ctx_kv
    return batch * cfg.num_blocks * per_block / 1e12
