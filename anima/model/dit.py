"""MiniTrainDIT (Cosmos-Predict2) with the Anima settings: the image denoiser (anima-spec §2).

Attribute names equal the checkpoint keys without the ``net.`` prefix, so an official state dict
(minus ``llm_adapter.*``, which belongs to the adapter module) loads with ``strict=True``. Nothing in
``__init__`` touches tensor data: build under ``torch.device("meta")`` and ``load_state_dict(...,
assign=True)`` to map a 2B checkpoint without a second copy.

Precision. The compute dtype is the weight dtype. In fp32 and bf16 everything runs in it. In fp16
the residual stream of the real model exceeds 65504 (anima-spec §7), so there — and only there — the
residual stream, the timestep embedding and the AdaLN modulations are kept in fp32 while attention
and MLP run in fp16; sub-layer outputs are upcast before ``x += gate * out``. This is the ComfyUI
scheme plus the sd-scripts #2302 fp32 modulation, expressed once through `_stream_dtype`.

Shapes: tokens travel as [B, L, D] with L = T' * H' * W' in (t, h, w) order.

Speed paths (each pinned against the plain path by tests/test_perf_*.py): cross-attention K/V
computed once per context (`prepare_context` -> ``context_cache=``), RoPE tables cached per grid,
q/k RMSNorm + RoPE in one fp32 pass, fused q/k/v (`fuse_qkv`), the MLP in row chunks on a CPU
(`MLP`), a choice of attention kernel, and the opt-in first-block step cache (``step_cache=``). Any
layer replaced by a wrapper (LoRA, quantisation, NAG) is called as a module; fast paths that would
bypass it step aside.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from anima.model.config import DiTConfig
from anima.model.dit_attention import KV, Attention, ContextKV, fuse_qkv, rope_tables  # noqa: F401 (re-exported)
from anima.model.dit_cache import ContextCache, FirstBlockCache
from anima.model.rope import Rope3D

_EPS = 1e-6


def _lives_on(module: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Are all of the module's tensors on `device`, its floating parameters in `dtype`? (Blocks kept
    in their file's dtype under a CPU RAM budget are upcast only inside their own forward; buffers
    such as 8-bit layers' float32 scales are theirs to cast.)"""
    on = all(t.device == device for t in (*module.parameters(), *module.buffers()))
    return on and all(p.dtype == dtype or not p.is_floating_point() for p in module.parameters())


class TimeCond(NamedTuple):
    """Timestep conditioning (anima-spec §2.5)."""

    sinusoid: torch.Tensor  # [B, 1, D] fp32: [cos(sigma f), sin(sigma f)]
    adaln_lora: torch.Tensor  # [B, 1, 3D]: linear_2(SiLU(linear_1(sinusoid))), added to every modulation
    emb: torch.Tensor  # [B, 1, D]: t_embedding_norm(sinusoid), input of every modulation


def timestep_sinusoid(sigma: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] raw sigma -> [B, 1, dim] fp32 [cos, sin] embedding, f_i = exp(-ln(10000) i / (dim/2))."""
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half
    angles = sigma.reshape(-1, 1).float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)[:, None, :]


def _linear(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Bias-free linear evaluated in x.dtype (a no-op cast unless fp16 weights meet fp32 inputs).

    A replaced layer runs its own forward: a LoRA wrapper computes in x's dtype too (so the fp32
    AdaLN path of an fp16 model stays fp32 with LoRAs on it), quantised weights cast x themselves.
    """
    if type(layer) is nn.Linear:
        return F.linear(x, layer.weight.to(x.dtype))
    return layer(x).to(x.dtype)


def module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a (possibly wrapped or quantised) layer computes in."""
    dtype = getattr(module, "compute_dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    for p in module.parameters():
        if p.dtype in (torch.float32, torch.bfloat16, torch.float16):
            return p.dtype
    return torch.float32


def _adaln(mod: nn.Sequential, emb: torch.Tensor, lora: torch.Tensor) -> torch.Tensor:
    """AdaLN-LoRA modulation ``W2 W1 SiLU(emb) + lora``, in emb's dtype (fp32 for fp16 models)."""
    return _linear(_linear(F.silu(emb), mod[1]), mod[2]) + lora


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Non-affine LayerNorm (eps 1e-6), then ``* (1 + scale) + shift`` (one fused pass for the affine)."""
    return torch.addcmul(shift, F.layer_norm(x, (x.shape[-1],), eps=_EPS), 1 + scale)


def _modulation_mlp(width: int, rank: int, n_out: int) -> nn.Sequential:
    # Index 0 (SiLU) carries no weights; the checkpoint keys are `.1` and `.2`.
    return nn.Sequential(nn.SiLU(), nn.Linear(width, rank, bias=False), nn.Linear(rank, n_out, bias=False))


class Patchify(nn.Module):
    """``b c (t r) (h m) (w n) -> b t h w (c r m n)``: feature index c*r*m*n-major (anima-spec §2.3)."""

    def __init__(self, patch_temporal: int, patch_spatial: int) -> None:
        super().__init__()
        self.pt, self.ps = patch_temporal, patch_spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        r, p = self.pt, self.ps
        x = x.reshape(b, c, t // r, r, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        n_in = (cfg.in_channels + 1) * cfg.patch_temporal * cfg.patch_spatial**2
        self.proj = nn.Sequential(
            Patchify(cfg.patch_temporal, cfg.patch_spatial), nn.Linear(n_in, cfg.model_channels, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TimestepSinusoid(nn.Module):
    """``t_embedder.0``: parameter-free [B] sigma -> [B, 1, D] fp32 sinusoid."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return timestep_sinusoid(sigma, self.width)


class TimestepEmbedding(nn.Module):
    """The ``t_embedder.1`` MLP; with AdaLN-LoRA its output is the additive [B, 1, 3D] term."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(width, width, bias=False)
        self.linear_2 = nn.Linear(width, 3 * width, bias=False)

    def forward(self, sinusoid: torch.Tensor) -> torch.Tensor:
        return _linear(F.silu(_linear(sinusoid, self.linear_1)), self.linear_2)


# Rows of the MLP's input processed at a time on a CPU (see `MLP`).
CPU_MLP_ROWS = 512


class MLP(nn.Module):
    """layer2(GELU(layer1(x))), row-wise; on a CPU, `CPU_MLP_ROWS` rows at a time.

    Why chunk: at 512x512 the CFG batch is 2048 rows, so the 4x-wide hidden activations are 32 MB in
    bf16, more than the last-level cache of a small CPU; the up-projection, the GELU and the
    down-projection then each stream them through DRAM. 512 rows (8 MB) at a time stay in the cache:
    one MLP took 155 ms instead of 230 ms in bf16 on a 2-core AVX-512 EPYC (bench/README.md; fp32 is
    bound by the arithmetic and unchanged). Rows are independent, so the numbers are those of the
    whole batch. Only for plain ``nn.Linear`` layers: an 8-bit layer quantises its input per call
    with one scale for all rows, which a chunk would change, and wrappers are called as they are.
    """

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(width, hidden, bias=False)
        self.layer2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows > CPU_MLP_ROWS and x.device.type == "cpu" and self._plain() and not torch.is_grad_enabled():
            flat = x.reshape(rows, x.shape[-1])
            out = flat.new_empty(rows, self.layer2.out_features)
            for i in range(0, rows, CPU_MLP_ROWS):
                out[i : i + CPU_MLP_ROWS] = self._mlp(flat[i : i + CPU_MLP_ROWS])
            return out.reshape(*x.shape[:-1], -1)
        return self._mlp(x)

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(F.gelu(self.layer1(x)))  # exact (erf) GELU

    def _plain(self) -> bool:
        return type(self.layer1) is nn.Linear and type(self.layer2) is nn.Linear


class Block(nn.Module):
    """Self-attn (RoPE) -> cross-attn (no mask) -> MLP, each AdaLN-modulated and gated (anima-spec §2.6)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d, r = cfg.model_channels, cfg.adaln_lora_dim
        self.self_attn = Attention(d, d, cfg.num_heads, cfg.head_dim)
        self.cross_attn = Attention(d, cfg.crossattn_emb_channels, cfg.num_heads, cfg.head_dim)
        self.mlp = MLP(d, cfg.mlp_hidden)
        self.adaln_modulation_self_attn = _modulation_mlp(d, r, 3 * d)
        self.adaln_modulation_cross_attn = _modulation_mlp(d, r, 3 * d)
        self.adaln_modulation_mlp = _modulation_mlp(d, r, 3 * d)

    def forward(
        self,
        x: torch.Tensor,
        cond: TimeCond,
        context: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        kv: KV | ContextKV | None = None,
    ) -> torch.Tensor:
        """x: [B, L, D] residual stream; context: [B, Lc, C] in the compute dtype.

        kv: this block's cross-attention keys/values of `context` (`MiniTrainDIT.prepare_context`);
        ignored when `cross_attn` has been wrapped, so a wrapper always sees the plain call.
        """
        compute = self.self_attn.q_norm.weight.dtype  # norms are never wrapped or quantised

        def sublayer(
            mod: nn.Sequential, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
        ) -> torch.Tensor:
            shift, scale, gate = _adaln(mod, cond.emb, cond.adaln_lora).chunk(3, dim=-1)
            out = fn(_modulate(x, shift, scale).to(compute))
            return torch.addcmul(x, gate.to(x.dtype), out.to(x.dtype))

        if kv is not None and type(self.cross_attn) is Attention:
            cross = lambda h: self.cross_attn(h, context, kv=kv)  # noqa: E731
        else:
            cross = lambda h: self.cross_attn(h, context)  # noqa: E731
        x = sublayer(self.adaln_modulation_self_attn, lambda h: self.self_attn(h, rope=rope), x)
        x = sublayer(self.adaln_modulation_cross_attn, cross, x)
        return sublayer(self.adaln_modulation_mlp, self.mlp, x)


class FinalLayer(nn.Module):
    """Modulated LayerNorm (shift first, then scale) and the projection to patch pixels (anima-spec §2.7)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        d = cfg.model_channels
        n_out = cfg.patch_spatial**2 * cfg.patch_temporal * cfg.out_channels
        self.linear = nn.Linear(d, n_out, bias=False)
        self.adaln_modulation = _modulation_mlp(d, cfg.adaln_lora_dim, 2 * d)

    def forward(self, x: torch.Tensor, cond: TimeCond) -> torch.Tensor:
        d = x.shape[-1]
        shift, scale = _adaln(self.adaln_modulation, cond.emb, cond.adaln_lora[..., : 2 * d]).chunk(2, dim=-1)
        return self.linear(_modulate(x, shift, scale).to(module_dtype(self.linear)))


class MiniTrainDIT(nn.Module):
    """The Anima DiT without the LLM adapter. ``forward(x, sigma, context) -> velocity``."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.model_channels
        self.x_embedder = PatchEmbed(cfg)
        # Index 0 has no weights; the keys live under `t_embedder.1.*`.
        self.t_embedder = nn.ModuleList([TimestepSinusoid(d), TimestepEmbedding(d)])
        self.t_embedding_norm = nn.RMSNorm(d, eps=_EPS)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_blocks)])
        self.final_layer = FinalLayer(cfg)
        self.rope = Rope3D(
            cfg.head_dim,
            (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio),
        )

    # -- dtypes ---------------------------------------------------------------------------------

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.t_embedding_norm.weight.dtype  # a norm: never wrapped by LoRA nor quantised

    @property
    def _stream_dtype(self) -> torch.dtype:
        """Dtype of the residual stream and of the conditioning path: fp32 when computing in fp16."""
        return torch.float32 if self.compute_dtype == torch.float16 else self.compute_dtype

    # -- stages (public so tests and tools can look inside) -------------------------------------

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] latent -> [B, T', H', W', D] patch tokens (compute dtype).

        Pads T/H/W circularly up to the patch size (as ComfyUI does for odd latent sizes), appends
        the all-zero padding-mask channel, patchifies in (c, r, m, n) order and projects.
        """
        x = x.to(self.compute_dtype)
        t, h, w = x.shape[2:]
        pt, ps = self.cfg.patch_temporal, self.cfg.patch_spatial
        pad = (0, -w % ps, 0, -h % ps, 0, -t % pt)
        if any(pad):
            x = F.pad(x, pad, mode="circular")
        mask = x.new_zeros(x.shape[0], 1, *x.shape[2:])
        return self.x_embedder(torch.cat([x, mask], dim=1))

    def time_embedding(self, sigma: torch.Tensor) -> TimeCond:
        """[B] raw sigma in [0, 1] -> conditioning in the stream dtype (fp32 for fp16 models)."""
        dtype = self._stream_dtype
        sinusoid = self.t_embedder[0](sigma)
        s = sinusoid.to(dtype)
        norm = self.t_embedding_norm
        emb = F.rms_norm(s, norm.normalized_shape, norm.weight.to(dtype), _EPS)
        return TimeCond(sinusoid, self.t_embedder[1](s), emb)

    def unpatchify(self, y: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, (p1 p2 r C)] -> [B, C, T, H, W]; channel index innermost (anima-spec §2.7)."""
        pt, ps = self.cfg.patch_temporal, self.cfg.patch_spatial
        t, h, w = grid
        y = y.reshape(y.shape[0], t, h, w, ps, ps, pt, -1)
        y = y.permute(0, 7, 1, 6, 2, 4, 3, 5)
        return y.reshape(y.shape[0], y.shape[1], t * pt, h * ps, w * ps)

    # -- forward ----------------------------------------------------------------------------------

    @torch.no_grad()
    def prepare_context(self, context: torch.Tensor) -> ContextCache:
        """Cross-attention keys/values of `context` for every block, computed once per prompt.

        Pass the result as ``context_cache=`` with the same context on every sampling step. Build it
        after LoRAs/patches are applied (it runs the live k/v projections) and again whenever they
        change. Blocks whose `cross_attn` is wrapped get no entry and run the plain path; so do blocks
        whose weights live on another device or dtype (streamed from host memory or upcast from bf16,
        `anima.runtime.streaming`): their weights reach the context's device and dtype only inside
        their own forward, which then projects itself.
        """
        context = context.to(self.compute_dtype)
        kv = tuple(
            b.cross_attn.context_kv(context)
            if type(b.cross_attn) is Attention and _lives_on(b.cross_attn, context.device, context.dtype)
            else None
            for b in self.blocks
        )
        return ContextCache(context=context, kv=kv)

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        *,
        context_cache: ContextCache | None = None,
        step_cache: FirstBlockCache | None = None,
    ) -> torch.Tensor:
        """x: [B, C, T, H, W] normalised latent; sigma: [B] raw sigma; context: [B, L, C_ctx].

        context_cache: `prepare_context(context)`, reused across steps (the same maths, less work:
            equal to the plain path up to float rounding, `ContextKV`).
        step_cache: opt-in first-block cache that may skip blocks 1..N-1 (changes the result).
        Returns the velocity v = noise - x0, [B, C_out, T, H, W] in x.dtype.
        """
        t, h, w = x.shape[2:]
        tokens = self.embed(x)
        grid = tuple(tokens.shape[1:4])
        cond = self.time_embedding(sigma.to(x.device).reshape(-1))
        rope = rope_tables(*self.rope(grid, x.device))
        context = context.to(self.compute_dtype)
        kv: tuple[ContextKV | None, ...] = (None,) * len(self.blocks)
        if context_cache is not None:
            context_cache.check(context, len(self.blocks))
            kv = context_cache.kv
        stream = tokens.flatten(1, 3).to(self._stream_dtype)

        def run(stream: torch.Tensor, first: int, last: int) -> torch.Tensor:
            for j in range(first, last):
                stream = self.blocks[j](stream, cond, context, rope, kv[j])
            return stream

        if step_cache is None:
            stream = run(stream, 0, len(self.blocks))
        else:
            n = len(self.blocks)
            stream = step_cache.run(stream, context, lambda s: run(s, 0, 1), lambda s: run(s, 1, n))
        y = self.final_layer(stream, cond)
        return self.unpatchify(y, grid)[:, :, :t, :h, :w].to(x.dtype)
