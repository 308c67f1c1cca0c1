"""The weight-update maths of LoRA, LyCORIS LoKr and LyCORIS LoHa, for Linear layers.

Each adapter is an `nn.Module` holding its factors as parameters, so the same class serves loaded
files (frozen) and training (trainable). Every adapter gives

- `delta_weight()`: the dense update ΔW [out, in] in fp32, scale included;
- `delta(x)`: ΔW x computed the cheap way (two thin matmuls for LoRA, the Kronecker identity
  ``(A ⊗ B) vec(X) = vec(A X Bᵀ)`` for LoKr), scale included;
- `tensors()`: its factors under canonical names (the file layer adds prefixes/suffixes).

Scales follow the producers (sd-scripts `networks/lora_anima.py`, LyCORIS `modules/lokr.py` and
`loha.py`; ComfyUI loads them the same way):

- LoRA: ``alpha / rank`` (no alpha, or 0: scale 1);
- LoKr: ``alpha / dim`` where dim is the inner size of a factorised w1 (``w1_b.shape[0]``) or else of
  w2; when both halves are full matrices the scale is 1 whatever alpha says;
- LoHa: ``alpha / w1_b.shape[0]``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

Tensors = dict[str, torch.Tensor]


def _param(t: torch.Tensor | None, trainable: bool) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=trainable)


def _alpha(alpha: float | torch.Tensor | None) -> float | None:
    if alpha is None:
        return None
    value = float(alpha)
    return value if value != 0 else None


def _tucker(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LyCORIS Tucker rebuild for a Linear: core [r, r], a [r, out], b [r, in] -> [out, in]."""
    return torch.einsum("ij,ip,jr->pr", core, a, b)


class Adapter(nn.Module):
    """Common interface. `in_features`/`out_features` are the adapted layer's; `alpha` as stored."""

    kind: ClassVar[str] = ""
    in_features: int
    out_features: int
    alpha: float | None

    @property
    def rank(self) -> int:
        raise NotImplementedError

    @property
    def scale(self) -> float:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.delta_weight().to(x.dtype))

    def tensors(self) -> Tensors:
        return {k: p for k, p in self.named_parameters()}

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, rank={self.rank}, alpha={self.alpha}"


class LoRA(Adapter):
    """ΔW = up @ down * alpha / rank; down [r, in] ("lora_down" / "lora_A"), up [out, r]."""

    kind = "lora"

    def __init__(
        self,
        down: torch.Tensor,
        up: torch.Tensor,
        alpha: float | torch.Tensor | None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            raise ValueError(f"LoRA factors do not chain: down {tuple(down.shape)}, up {tuple(up.shape)}")
        self.down = _param(down, trainable)
        self.up = _param(up, trainable)
        self.in_features, self.out_features = down.shape[1], up.shape[0]
        self.alpha = _alpha(alpha)

    @classmethod
    def create(
        cls,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float | None = None,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> LoRA:
        """Trainable and zero at start: down Kaiming-uniform (as sd-scripts), up zeros."""
        down = torch.empty(rank, in_features, dtype=dtype, device=device)
        nn.init.kaiming_uniform_(down, a=math.sqrt(5), generator=generator)
        up = torch.zeros(out_features, rank, dtype=dtype, device=device)
        return cls(down, up, alpha if alpha is not None else float(rank), trainable=True)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def delta_weight(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float()) * self.scale

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype)) * self.scale


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split `dimension` = m * n with m <= n, m as large as possible but at most `factor` (LoKr's
    block shape; factor -1: the most balanced split)."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor <= 0 else factor
    m = max(d for d in range(1, math.isqrt(dimension) + 1) if dimension % d == 0 and d <= limit)
    return m, dimension // m


class LoKr(Adapter):
    """ΔW = kron(w1, w2) * scale. w1 [a, c] is a full matrix or w1_a [a, r] @ w1_b [r, c]; w2 [b, d]
    is full, w2_a [b, r] @ w2_b [r, d], or a Tucker core t2 [r, r] with w2_a [r, b], w2_b [r, d]."""

    kind = "lokr"
    NAMES = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")

    def __init__(
        self,
        *,
        w1: torch.Tensor | None = None,
        w1_a: torch.Tensor | None = None,
        w1_b: torch.Tensor | None = None,
        w2: torch.Tensor | None = None,
        w2_a: torch.Tensor | None = None,
        w2_b: torch.Tensor | None = None,
        t2: torch.Tensor | None = None,
        alpha: float | torch.Tensor | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if (w1 is None) == (w1_a is None or w1_b is None):
            raise ValueError("LoKr needs either lokr_w1 or both lokr_w1_a and lokr_w1_b")
        if (w2 is None) == (w2_a is None or w2_b is None):
            raise ValueError("LoKr needs either lokr_w2 or both lokr_w2_a and lokr_w2_b")
        for name, t in (
            ("w1", w1),
            ("w1_a", w1_a),
            ("w1_b", w1_b),
            ("w2", w2),
            ("w2_a", w2_a),
            ("w2_b", w2_b),
        ):
            if t is not None and t.ndim != 2:
                raise ValueError(
                    f"lokr_{name} has shape {tuple(t.shape)}; only Linear (2-D) LoKr is supported"
                )
        self.w1, self.w1_a, self.w1_b = (_param(t, trainable) for t in (w1, w1_a, w1_b))
        self.w2, self.w2_a, self.w2_b, self.t2 = (_param(t, trainable) for t in (w2, w2_a, w2_b, t2))
        a, c = w1.shape if w1 is not None else (w1_a.shape[0], w1_b.shape[1])
        if w2 is not None:
            b, d = w2.shape
        elif t2 is not None:
            b, d = w2_a.shape[1], w2_b.shape[1]
        else:
            b, d = w2_a.shape[0], w2_b.shape[1]
        self.blocks = (a, c, b, d)
        self.out_features, self.in_features = a * b, c * d
        self.alpha = _alpha(alpha)

    @classmethod
    def create(
        cls,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float | None = None,
        *,
        factor: int = -1,
        decompose_both: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> LoKr:
        """Trainable and zero at start, shaped as LyCORIS does: w1 is the small Kronecker block
        (full unless `decompose_both`), w2 the big one, low-rank unless rank >= half its size."""
        in_m, in_n = factorization(in_features, factor)
        out_l, out_k = factorization(out_features, factor)

        def kaiming(*shape: int) -> torch.Tensor:
            t = torch.empty(*shape, dtype=dtype, device=device)
            return nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)

        kw: Tensors = {}
        if decompose_both and rank < max(out_l, in_m) / 2:
            kw["w1_a"], kw["w1_b"] = kaiming(out_l, rank), kaiming(rank, in_m)
        else:
            kw["w1"] = kaiming(out_l, in_m)
        if rank < max(out_k, in_n) / 2:
            kw["w2_a"] = kaiming(out_k, rank)
            kw["w2_b"] = torch.zeros(rank, in_n, dtype=dtype, device=device)
        else:
            kw["w2"] = torch.zeros(out_k, in_n, dtype=dtype, device=device)
        return cls(**kw, alpha=alpha if alpha is not None else float(rank), trainable=True)

    @property
    def rank(self) -> int:
        if self.w1_b is not None:
            return self.w1_b.shape[0]
        if self.w2_b is not None:
            return self.w2_b.shape[0]
        return 0  # both halves full: no rank

    @property
    def scale(self) -> float:
        dim = self.rank
        return self.alpha / dim if (self.alpha is not None and dim) else 1.0

    def _w1(self) -> torch.Tensor:
        return self.w1 if self.w1 is not None else self.w1_a @ self.w1_b

    def _w2(self) -> torch.Tensor:
        if self.w2 is not None:
            return self.w2
        if self.t2 is not None:
            return _tucker(self.t2, self.w2_a, self.w2_b)
        return self.w2_a @ self.w2_b

    def delta_weight(self) -> torch.Tensor:
        return torch.kron(self._w1().float(), self._w2().float()) * self.scale

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        a, c, b, d = self.blocks
        w1, w2 = self._w1().to(x.dtype), self._w2().to(x.dtype)
        h = x.unflatten(-1, (c, d)) @ w2.T  # [..., c, b]
        return (w1 @ h).flatten(-2) * self.scale  # [..., a, b] -> [..., a*b]

    def tensors(self) -> Tensors:
        return {k: getattr(self, k) for k in self.NAMES if getattr(self, k) is not None}


class LoHa(Adapter):
    """ΔW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank (element-wise product; LyCORIS "hada").
    With Tucker cores t1/t2 the halves are rebuilt as in LyCORIS (w*_a then holds [r, out])."""

    kind = "loha"
    NAMES = ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")

    def __init__(
        self,
        *,
        w1_a: torch.Tensor,
        w1_b: torch.Tensor,
        w2_a: torch.Tensor,
        w2_b: torch.Tensor,
        t1: torch.Tensor | None = None,
        t2: torch.Tensor | None = None,
        alpha: float | torch.Tensor | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        for name, t in (("w1_a", w1_a), ("w1_b", w1_b), ("w2_a", w2_a), ("w2_b", w2_b)):
            if t.ndim != 2:
                raise ValueError(
                    f"hada_{name} has shape {tuple(t.shape)}; only Linear (2-D) LoHa is supported"
                )
        self.w1_a, self.w1_b, self.w2_a, self.w2_b = (_param(t, trainable) for t in (w1_a, w1_b, w2_a, w2_b))
        self.t1, self.t2 = _param(t1, trainable), _param(t2, trainable)
        self.out_features = w1_a.shape[1] if t1 is not None else w1_a.shape[0]
        self.in_features = w1_b.shape[1]
        self.alpha = _alpha(alpha)

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def _half(self, a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return _tucker(t.float(), a.float(), b.float()) if t is not None else a.float() @ b.float()

    def delta_weight(self) -> torch.Tensor:
        return (
            self._half(self.w1_a, self.w1_b, self.t1) * self._half(self.w2_a, self.w2_b, self.t2) * self.scale
        )

    def tensors(self) -> Tensors:
        return {k: getattr(self, k) for k in self.NAMES if getattr(self, k) is not None}


KINDS: dict[str, type[Adapter]] = {"lora": LoRA, "lokr": LoKr, "loha": LoHa}


def from_tensors(kind: str, tensors: Tensors, alpha: float | torch.Tensor | None) -> Adapter:
    """Build a frozen adapter from canonical tensor names (see each class); ValueError if inconsistent."""
    if kind == "lora":
        missing = {"down", "up"} - tensors.keys()
        if missing:
            raise ValueError(f"LoRA is missing its {' and '.join(sorted(missing))} matrix")
        return LoRA(tensors["down"], tensors["up"], alpha)
    cls = KINDS[kind]
    unknown = set(tensors) - set(cls.NAMES)
    if unknown:
        raise ValueError(f"{kind} does not use {sorted(unknown)}")
    try:
        return cls(**tensors, alpha=alpha)
    except TypeError as e:  # a required factor is absent
        raise ValueError(f"incomplete {kind} factors {sorted(tensors)}: {e}") from None
