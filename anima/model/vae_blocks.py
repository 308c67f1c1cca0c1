"""Building blocks of the Wan-2.1 / Qwen-Image VAE, specialised to a single frame (T = 1).

Every module keeps the checkpoint's parameter names and state-dict shapes (5-D causal-conv weights,
``gamma`` norms) so the official file loads with ``strict=True``, but the forward passes work on 4-D
[N, C, H, W] tensors. Why this is exact for one frame:

- A causal 3-D conv pads ``2 * p_t`` zero frames in *front* of the clip. With one input frame and
  k_t = 3 the kernel sees [0, 0, x], so only the last temporal tap ``weight[:, :, -1]`` contributes:
  the layer is a 2-D conv with that slice (k_t = 1 convs are trivially the same).
- The temporal ``time_conv`` of a resample block only runs from the second chunk on (Wan's feature
  cache marks the first chunk and skips it), so for an image it is never applied. It is kept as a
  parameter holder for strict loading.

Activations are expected in ``torch.channels_last`` (the model converts its input once): the
channel reductions of the norms become contiguous and the CPU/cuDNN convolutions are faster
(measured ~2x for conv and ~10x for the norm on CPU). Every op here preserves that layout.

A causal conv therefore holds only its last temporal tap ([out, in, 1, kh, kw]): loading slices it
out of the checkpoint's [out, in, k_t, kh, kw], and `state_dict` writes the checkpoint's shape back
with the earlier taps as zeros (what they multiply on an image). The 3x3x3 convs are most of the
VAE, so this keeps about 40% of its weights: 0.19 instead of 0.47 GB in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv3d(nn.Module):
    """Parameter holder for a Wan causal 3-D conv, evaluated on a single frame as a 2-D conv.

    Weights start at zero: they are always meant to come from a checkpoint (build on the meta
    device and ``load_state_dict(..., assign=True)``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> None:
        super().__init__()
        self.taps = kernel[0]  # the checkpoint's temporal kernel; only the last tap is held
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, *kernel[1:]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # Spatial padding is symmetric ("same"); the temporal padding is causal and only adds zeros.
        self.padding = kernel[-1] // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Last temporal tap: the others only ever meet the causal zero padding.
        return F.conv2d(x, self.weight[:, :, 0], self.bias, padding=self.padding)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        w = state_dict.get(prefix + "weight")
        if w is not None and w.ndim == 5 and w.shape[2] == self.taps > 1:
            state_dict[prefix + "weight"] = w[:, :, -1:].contiguous()  # a copy: the full source can go
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.taps > 1:
            w = destination[prefix + "weight"]
            full = w.new_zeros(*w.shape[:2], self.taps, *w.shape[3:])
            full[:, :, -1:] = w.detach()
            destination[prefix + "weight"] = full


class RMSNorm(nn.Module):
    """Wan ``RMS_norm``: L2-normalise over channels, times sqrt(C) and a per-channel ``gamma``.

    ``gamma`` is [C, 1, 1, 1] in the residual/head norms and [C, 1, 1] in the attention norm
    (`ndim` selects which, to match the checkpoint). No bias in this VAE.
    """

    def __init__(self, dim: int, ndim: int = 4) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * (ndim - 1))))
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.normalize divides by max(||x||, 1e-12) like the reference. Half types accumulate the
        # norm in fp32 (the sum of squares over hundreds of channels is too coarse in bf16) straight
        # from the half input, and scale by the small [N, 1, H, W] reciprocal: two full passes instead
        # of five (upcast, norm, divide, downcast, gamma). Within one half-precision ulp of the fp32 path.
        gamma = self.gamma.view(-1, 1, 1) * self.scale
        if x.dtype in (torch.float16, torch.bfloat16):
            norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)
            inv = norm.clamp_min_(1e-12).reciprocal_().to(x.dtype)
            return torch.mul(x, inv).mul_(gamma.to(x.dtype))
        # One multiply by (gamma * sqrt(C)) instead of two full-tensor passes.
        return F.normalize(x, dim=1) * gamma


class ResidualBlock(nn.Module):
    """``x + shortcut(x)`` with residual = [RMS, SiLU, conv3, RMS, SiLU, dropout, conv3].

    The Sequential keeps Wan's indices (0, 2, 3, 6 hold parameters); dropout is an identity at
    inference.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim),
            nn.SiLU(inplace=True),  # in place on the norm's fresh output
            CausalConv3d(in_dim, out_dim, (3, 3, 3)),
            RMSNorm(out_dim),
            nn.SiLU(inplace=True),
            nn.Identity(),  # dropout slot
            CausalConv3d(out_dim, out_dim, (3, 3, 3)),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, (1, 1, 1)) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.residual(x)  # a fresh conv output: add in place, one full-size buffer fewer
        return out.add_(self.shortcut(x))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of the frame, with a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, ndim=3)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # Channels [0, C) are q, [C, 2C) k, [2C, 3C) v; tokens are the H*W positions. On a
        # channels-last activation the permute is free. SDPA gets 4-D [N, 1 head, HW, C] inputs so
        # that the fused (flash) kernels apply instead of the math path's HW x HW matrix.
        qkv = self.to_qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(n, 1, h * w, 3, c)
        q, k, v = qkv.unbind(3)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C)
        out = out.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return self.proj(out).add_(x)


class Resample(nn.Module):
    """Spatial 2x down/up-sampling; ``time_conv`` (3-D modes only) is loaded but unused for T = 1.

    - ``downsample*``: zero-pad right/bottom by 1, then a 3x3 stride-2 conv (C -> C).
    - ``upsample*``: nearest-exact 2x (equal to plain nearest for a factor of 2), then a 3x3 conv
      halving the channels (C -> C/2).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest-exact"),
                nn.Conv2d(dim, dim // 2, 3, padding=1),
            )
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Single frame: Wan skips time_conv on the first chunk (see module docstring).
        return self.resample(x)
