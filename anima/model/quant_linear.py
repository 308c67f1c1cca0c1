"""`QuantLinear`: a bias-free Linear whose weight is stored in 8 bits (int8 or fp8) with float32 scales.

One module for every 8-bit weight anima holds: the blocks of ``--weights int8|fp8``
(`anima.runtime.quant.quantize_dit`), and the layers of 8-bit files made for ComfyUI (its
``scaled_fp8`` and per-layer ``comfy_quant`` checkpoints, the INT8 nodes' int8 row-wise files with or
without the ConvRot rotation; read by `anima.weights.quant_files`). ``W = q · scale``, scale per tensor
([1, 1]) or per output channel ([out, 1]).

Dequantisation follows the producers exactly (comfy-kitchen, which ComfyUI calls):

- fp8 (e4m3fn or e5m2): ``q.to(dtype) * scale.to(dtype)``, both factors in the compute dtype
  (``dequantize_per_tensor_fp8``);
- int8: ``(q.float() * scale).to(dtype)``, one rounding (``dequantize_int8_simple_dtype``);
- int8 + ConvRot (`rotation` = group size g): the file holds ``W_rot = W Hᵀ`` per group of g input
  columns, H the normalised *regular* Hadamard matrix of ConvRot (Kronecker powers of a 4x4 regular
  Hadamard, so g is a power of 4); ``W = W_rot H`` is restored in float32, then cast
  (``dequantize_int8_convrot_weight``). The quantised kernels rotate the activations instead.

The matmul itself is chosen per device by `anima.model.qmatmul` (int8 or fp8 tensor cores, oneDNN's
int8 matmul on CPUs, else dequantise + matmul).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from anima.errors import AnimaError
from anima.model import qmatmul

FORMATS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
QMAX = {"int8": 127.0, "fp8": 448.0, "fp8_e5m2": 57344.0}


def quantize_weight(w: torch.Tensor, fmt: str, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float weight -> (8-bit weight, fp32 scale [out, 1] or [1, 1]); w ~= q * scale.

    Symmetric round-to-nearest, scale = amax / qmax (127 for int8, 448 for fp8 e4m3)."""
    if fmt not in ("int8", "fp8"):
        raise AnimaError(f"unknown weight format '{fmt}'; choose int8 or fp8")
    if per_channel and w.device.type == "cpu" and w.dim() == 2 and w.shape[0] > _CPU_ROWS:
        return _quantize_rows(w.detach(), fmt)
    wf = w.detach().float()
    amax = wf.abs().amax(dim=1, keepdim=True) if per_channel else wf.abs().amax().reshape(1, 1)
    scale = (amax / QMAX[fmt]).clamp_min(1e-12)
    scaled = wf / scale
    if fmt == "int8":
        q = scaled.round_().clamp_(-127, 127).to(torch.int8)
    else:
        q = scaled.clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q, scale


# Rows of a weight quantised at a time on a CPU (`_quantize_rows`).
_CPU_ROWS = 256


def _quantize_rows(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_weight`'s per-channel result, `_CPU_ROWS` rows at a time.

    Why: the whole-matrix version makes five passes over an fp32 copy of the weight (cast, |w|,
    max, divide, round), each through DRAM for the DiT's 16-64 MB matrices; 256 rows (2-8 MB) stay
    in the cache. A bf16 8192 x 2048 weight took 34 ms instead of 56-64 ms on a 2-core Zen 2. Every
    step is per row or per element, and max|w| is exact, so the values are the same bits. max|w| is
    max(max w, -min w): torch's two vectorised reductions took 0.13 ms on 256 x 8192 where
    ``vector_norm(ord=inf)`` took 2.5 ms and ``abs().amax()`` 1.5 ms (Zen 5, AVX-512 and AVX2 alike;
    ``vector_norm`` was 2.2 of the 11.4 s an int8 load took there)."""
    out = torch.empty(w.shape, dtype=FORMATS[fmt])
    scale = torch.empty(w.shape[0], 1, dtype=torch.float32)
    for i in range(0, w.shape[0], _CPU_ROWS):
        wf = w[i : i + _CPU_ROWS].to(torch.float32, copy=True)  # divided in place below
        amax = torch.maximum(wf.amax(dim=1, keepdim=True), wf.amin(dim=1, keepdim=True).neg_())
        s = scale[i : i + _CPU_ROWS] = (amax / QMAX[fmt]).clamp_min_(1e-12)
        scaled = wf.div_(s)
        if fmt == "int8":
            out[i : i + _CPU_ROWS] = scaled.round_().clamp_(-127, 127)
        else:
            out[i : i + _CPU_ROWS] = scaled.clamp_(-448.0, 448.0)
    return out, scale


def hadamard(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """ConvRot's normalised regular Hadamard matrix of `size` (a power of 4), float32, symmetric.
    Built once per size and device (every ConvRot layer's call uses it)."""
    if size < 4 or size & (size - 1) or (size.bit_length() - 1) % 2:
        raise AnimaError(f"ConvRot group size {size} is not a power of 4")
    return _hadamard(size, str(torch.device(device)))


@cache
def _hadamard(size: int, device: str) -> torch.Tensor:
    h4 = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=torch.float32)
    h = h4
    while h.shape[0] < size:
        h = torch.kron(h, h4)
    return (h / size**0.5).to(device)


def rotate_groups(t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``t`` [..., in] times ``hᵀ`` per group of h.shape[0] columns (ConvRot's weight rotation)."""
    g = h.shape[0]
    return torch.matmul(t.reshape(*t.shape[:-1], -1, g), h.t().to(t.dtype)).reshape(t.shape)


class QuantLinear(nn.Module):
    """A bias-free Linear with an 8-bit ``weight`` buffer and a float32 ``scale`` buffer.

    `input_scale`: a static activation scale (ComfyUI fp8 files carry one; used by the fp8 kernel);
    `rotation`: ConvRot group size (0: none). `kernel`: force a matmul kernel (tests, benchmarks).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        scale: torch.Tensor,
        fmt: str,
        compute_dtype: torch.dtype,
        *,
        input_scale: torch.Tensor | None = None,
        rotation: int = 0,
        kernel: str | None = None,
    ) -> None:
        super().__init__()
        if fmt not in FORMATS or weight.dtype != FORMATS[fmt]:
            raise AnimaError(f"8-bit weight format {fmt!r} with a {weight.dtype} tensor is not supported")
        self.fmt = fmt
        self.compute_dtype = compute_dtype  # read by anima.model.dit.module_dtype
        self.out_features, self.in_features = weight.shape
        if rotation:
            hadamard(rotation)  # validates the group size
            if self.in_features % rotation:
                raise AnimaError(
                    f"ConvRot group {rotation} does not divide {self.in_features} input features"
                )
        self.rotation = rotation
        # None: the device's kernel at each call (`qmatmul.pick`); a name forces it (dequant: how
        # every CPU ran 8-bit weights before the int8 kernels, for re-running such recipes).
        self.kernel = kernel
        # The packed weight of a CPU kernel (`qmatmul.PACKED`) and which kernel packed it. Once packed,
        # ``weight`` is emptied (the packed copy is the only one) and `int8_weight` unpacks it.
        self._packed: object | None = None
        self._packed_kernel = ""
        self._register_state_dict_hook(_state_with_weight)
        self.register_buffer("weight", weight)
        self.register_buffer(
            "scale", scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.reshape(1, 1)
        )
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float().reshape(()))

    @classmethod
    def from_linear(
        cls, linear: nn.Module, fmt: str, per_channel: bool = True, compute_dtype: torch.dtype | None = None,
        kernel: str | None = None,
    ) -> QuantLinear:
        """`compute_dtype`: None computes in the layer's dtype (pass it when the layer still holds
        the file's dtype, e.g. bf16 weights for an fp32 run)."""
        if getattr(linear, "bias", None) is not None:
            raise AnimaError("QuantLinear supports bias-free layers only (the Anima DiT has no biases)")
        q, scale = quantize_weight(linear.weight, fmt, per_channel)
        dtype = compute_dtype or linear.weight.dtype
        return cls(q, scale.to(linear.weight.device), fmt, dtype, kernel=kernel)

    def _packed_for(self, kernel: str) -> object:
        if self._packed is None or self._packed_kernel != kernel:
            self._packed = qmatmul.pack(self.int8_weight(), self.scale, kernel)
            self._packed_kernel = kernel
            self.weight = self.weight.new_empty((0,))  # the packed copy is the one kept
        return self._packed

    def prepack(self) -> bool:
        """Pack the weight now for the CPU kernel this layer will run (a no-op elsewhere), rather
        than on its first call; True when it packed. The loader packs every layer this way and gives
        the freed plain weights back block by block (`anima.runtime.quant.prepack`)."""
        kernel = self.kernel_to_pack()
        if kernel is None:
            return False
        self._packed_for(kernel)
        return True

    def kernel_to_pack(self) -> str | None:
        """The packed CPU kernel (`qmatmul.PACKED`) `prepack` would pack this layer for, or None when
        there is nothing to pack: on another device, already packed, or a kernel that packs nothing."""
        if self.weight.device.type != "cpu" or self.weight.numel() == 0:
            return None
        dev, shape = self.weight.device, (self.in_features, self.out_features)
        kernel = qmatmul.pick(self.fmt, dev, 1, *shape, self.kernel)
        return kernel if kernel in qmatmul.PACKED else None

    def int8_weight(self) -> torch.Tensor:
        """The 8-bit [out, in] values, unpacked when a CPU kernel holds them packed."""
        if self._packed is not None and self.weight.numel() == 0:
            return qmatmul.unpack(self._packed)
        return self.weight

    def _apply(self, fn, recurse: bool = True):
        # Moving or casting the layer (``.to``, ``.cuda()``): the packed copy is a CPU object that
        # neither follows; put the plain weight back first and pack again on the next CPU call.
        if self._packed is not None:
            self.weight, self._packed, self._packed_kernel = self.int8_weight(), None, ""
        return super()._apply(fn, recurse)

    def dequantize(self) -> torch.Tensor:
        """The dense [out, in] weight in the compute dtype (rotated back for ConvRot)."""
        if self.fmt != "int8":
            return self.weight.to(self.compute_dtype) * self.scale.to(self.compute_dtype)
        w = self.int8_weight().float() * self.scale
        if self.rotation:
            w = rotate_groups(w, hadamard(self.rotation, w.device))
        return w.to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.compute_dtype)
        rows = x.numel() // max(x.shape[-1], 1)
        kernel = qmatmul.pick(self.fmt, x.device, rows, self.in_features, self.out_features, self.kernel)
        if kernel != qmatmul.DEQUANT:
            x2 = x.reshape(rows, self.in_features)
            if self.rotation:  # x Wᵀ = (x H)(W_rot)ᵀ per group, H symmetric
                x2 = rotate_groups(x2.float(), hadamard(self.rotation, x.device)).to(x.dtype)
            if kernel == qmatmul.INT_MM:
                out = qmatmul.int_mm_linear(
                    x2.contiguous(), self.int8_weight(), self.scale, self.compute_dtype
                )
            elif kernel in qmatmul.PACKED:
                packed = self._packed_for(kernel)
                out = qmatmul.dynamic_linear(x2, packed, kernel, self.scale, self.compute_dtype)
            else:
                out = qmatmul.scaled_mm_linear(x2.contiguous(), self.weight, self.scale, self.compute_dtype,
                                               self.input_scale)  # fmt: skip
            return out.reshape(*x.shape[:-1], self.out_features)
        if self.scale.shape[0] > 1 and rows < self.in_features and not self.rotation and self.fmt == "int8":
            # Few tokens: scaling the [rows, out] output is cheaper than scaling the [out, in] weight.
            w = self.int8_weight().to(self.compute_dtype)
            return F.linear(x, w) * self.scale[:, 0].to(self.compute_dtype)
        return F.linear(x, self.dequantize())

    def extra_repr(self) -> str:
        per = "channel" if self.scale.shape[0] > 1 else "tensor"
        rot = f", convrot={self.rotation}" if self.rotation else ""
        shape = f"{self.in_features}, {self.out_features}"
        return f"{shape}, fmt={self.fmt}, per={per}{rot}, compute={self.compute_dtype}"


def _state_with_weight(module: QuantLinear, state: dict, prefix: str, _local_metadata) -> None:
    """A state dict holds the int8 values even while a CPU kernel keeps them packed."""
    key = prefix + "weight"
    if key in state and state[key].numel() == 0 and module._packed is not None:
        state[key] = qmatmul.unpack(module._packed)
