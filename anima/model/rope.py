"""Rotary position embeddings for the DiT (3D, split-half) and the LLM adapter (1D, rotate-half).

Tables (cos, sin) are always computed in float32; the apply functions say how they meet the
activation dtype, because the two models differ there (anima-spec §2.4 vs §3.3).

DiT (anima-spec §2.4): the head is split into a temporal part and two equal spatial parts,
``dim_h = dim_w = head_dim // 6 * 2`` and ``dim_t = head_dim - 2 * dim_h`` (44/42/42 for 128). Each axis
has its own frequencies ``1 / theta_axis ** (2j / dim_axis)`` with NTK-scaled thetas
``theta = 10000 * ratio ** (dim / (dim - 2))``, and the per-token angle vector is
``[t-angles, h-angles, w-angles]`` (head_dim / 2 entries). It rotates pairs (i, i + head_dim/2).

Adapter (anima-spec §3.3): HF Llama/Qwen style, ``inv_freq = 1 / theta ** (2i / head_dim)``,
``emb = cat(freqs, freqs)`` and ``x * cos + rotate_half(x) * sin``.
"""

from __future__ import annotations

import torch

_BASE_THETA = 10000.0


def rope3d_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head given to (t, h, w): (44, 42, 42) for head_dim 128."""
    dim_h = head_dim // 6 * 2
    dim_t = head_dim - 2 * dim_h
    if dim_h < 4 or dim_t < 4 or dim_t % 2:
        raise ValueError(f"head_dim {head_dim} is too small or odd for 3D RoPE")
    return dim_t, dim_h, dim_h


def rope3d_thetas(
    head_dim: int, ratios: tuple[float, float, float] = (1.0, 4.0, 4.0)
) -> tuple[float, float, float]:
    """NTK-extrapolated bases (theta_t, theta_h, theta_w); ratios are the (t, h, w) extrapolation ratios."""
    dims = rope3d_axis_dims(head_dim)
    # NTK-aware scaling: ratio ** (d / (d - 2)) makes the lowest frequency shrink by exactly `ratio`.
    return tuple(_BASE_THETA * r ** (d / (d - 2)) for r, d in zip(ratios, dims, strict=True))  # type: ignore[return-value]


def _axis_freqs(theta: float, dim: int, device: torch.device | None) -> torch.Tensor:
    # Same op order as the reference (fp32 range, python-float base) so tables agree to the last bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
    return 1.0 / (theta**exponents)


def rope3d_angles(
    grid: tuple[int, int, int],
    head_dim: int,
    ratios: tuple[float, float, float] = (1.0, 4.0, 4.0),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Rotation angles [T*H*W, head_dim/2] (fp32) for a (T, H, W) token grid flattened in t, h, w order.

    Positions are the integer indices 0..n-1 of each axis (no fps scaling).
    """
    t_len, h_len, w_len = grid
    device = torch.device(device) if device is not None else None
    dims = rope3d_axis_dims(head_dim)
    thetas = rope3d_thetas(head_dim, ratios)
    pos = torch.arange(max(grid), dtype=torch.float32, device=device)
    ang = [
        torch.outer(pos[:n], _axis_freqs(theta, dim, device))
        for n, theta, dim in zip(grid, thetas, dims, strict=True)
    ]
    return torch.cat(
        [
            ang[0][:, None, None, :].expand(t_len, h_len, w_len, -1),
            ang[1][None, :, None, :].expand(t_len, h_len, w_len, -1),
            ang[2][None, None, :, :].expand(t_len, h_len, w_len, -1),
        ],
        dim=-1,
    ).reshape(t_len * h_len * w_len, head_dim // 2)


def rope3d(
    grid: tuple[int, int, int],
    head_dim: int,
    ratios: tuple[float, float, float] = (1.0, 4.0, 4.0),
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each [T*H*W, head_dim/2] in fp32, for `apply_rope_split_half`."""
    angles = rope3d_angles(grid, head_dim, ratios, device)
    return torch.cos(angles), torch.sin(angles)


class Rope3D:
    """DiT RoPE tables, cached per (T, H, W, device): a sampler calls the model with the same grid
    every step, and the tables are identical each time.

    Deliberately not an nn.Module and holds no buffers, so it never appears in a state dict and a
    model built on the meta device needs no data for it.
    """

    def __init__(self, head_dim: int, ratios: tuple[float, float, float] = (1.0, 4.0, 4.0)) -> None:
        rope3d_axis_dims(head_dim)  # validate early
        self.head_dim = head_dim
        self.ratios = ratios
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(
        self, grid: tuple[int, int, int], device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(grid), str(torch.device(device)))
        if key not in self._cache:
            if len(self._cache) >= 8:  # a handful of resolutions per session; keep memory bounded
                self._cache.clear()
            self._cache[key] = rope3d(tuple(grid), self.head_dim, self.ratios, device)
        return self._cache[key]


def apply_rope_split_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) (NeoX / split-half layout), computed in fp32, returned in x.dtype.

    x: [..., L, D]; cos, sin: [L, D/2] (fp32), broadcast over the leading dims.
    The reference applies the DiT RoPE in fp32 and casts back, so low-precision runs do the same.
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def rope_1d(
    positions: torch.Tensor, head_dim: int, theta: float = _BASE_THETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-style 1D RoPE tables for integer `positions` ([L] or [B, L]).

    Returns (cos, sin), each [..., L, head_dim] in fp32, laid out as cat(freqs, freqs) for
    `apply_rope_rotate_half`.
    """
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with rotate_half(x) = cat(-x2, x1).

    x: [B, heads, L, D]; cos, sin: [L, D] or [B, L, D] (a heads axis is inserted for the latter).
    Following HF and every adapter reference, cos/sin are first cast to x.dtype and the math runs in
    x.dtype (so bf16 runs round the tables to bf16).
    """
    if cos.ndim == x.ndim - 1:
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
