"""The matmul of an 8-bit weight: which kernel runs it, for which device and format, in one place.

Three ways to compute ``y = x Wᵀ`` for an 8-bit weight ``W = q · s`` (q int8 or fp8 [out, in], s a
per-tensor or per-output-channel float32 scale):

- ``int_mm``: dynamic per-row activation quantisation ``x ≈ xq · sx`` (sx = rowmax|x| / 127, round to
  nearest), one ``torch._int_mm(xq, qᵀ)`` (int8 x int8 -> int32, exact), then ``y = acc · sx · s``.
  The standard W8A8 scheme (LLM.int8()'s vector-wise quantisation without outliers, SmoothQuant's
  kernel, ComfyUI's INT8 nodes and comfy-kitchen's TensorWiseINT8Layout). On CUDA it needs int8
  tensor cores: compute capability 7.5 (Turing) or newer. On CPUs ``torch._int_mm`` is oneDNN's
  int8 matmul, exact (int32 accumulation) where the CPU has VNNI or AMX-INT8. Measured on 2 cores of
  a Sapphire Rapids (AMX): 5-10x fp32 and 1-1.7x bf16 on the DiT's shapes.
- ``onednn`` (CPUs where oneDNN's int8 is exact: VNNI or AMX-INT8, each kernel probed once, see
  `CpuCapability`): the activations quantised per tensor (symmetric, 8 bits), then oneDNN's
  ``qlinear_pointwise`` on a weight reordered once by ``qlinear_prepack``, with the dequantisation
  and the output dtype fused in (``int_mm`` spends more time in torch's elementwise passes and its
  per-call weight reorder than in the matmul). Measured on 2 shared cores of a Sapphire Rapids
  (AMX), [512, 2048] x [2048 -> 8192], bf16 in and out: 45 ms, against 74 ms for the bf16 matmul in
  the same sitting (``int_mm``: 1.5-3x slower than bf16). (``torch.ops.quantized.linear_dynamic``
  with the onednn engine was as fast, but its packed object keeps a second copy of the weight.)
- ``fbgemm``: CPUs whose oneDNN int8 is not exact (plain AVX2 / AVX-512F: ``vpmaddubsw`` adds
  pairs of u8 x s8 products in saturating int16). fbgemm's dynamic linear with ``reduce_range``
  (7-bit activations, so a pair of products cannot saturate): the path of most desktops/laptops.

  Both packed kernels keep only the packed copy: the layer's plain ``weight`` is emptied after
  packing (on first use) and unpacked again when something asks for it (`QuantLinear`).
- ``scaled_mm``: per-tensor activation quantisation to float8 e4m3 (sx = max|x| / 448, or the static
  ``input_scale`` a ComfyUI fp8 file carries), then ``torch._scaled_mm``; a per-channel weight scale
  multiplies the output afterwards. Needs fp8 tensor cores: compute capability 8.9 (Ada) or newer.
- ``dequant``: the weight is dequantised to the compute dtype and a normal matmul runs (the numbers
  of a dense model whose weights were rounded to 8 bits). The fallback everywhere else (fp8 on
  CPUs, CPUs without oneDNN or below AVX2, older GPUs).

The quantised kernels also round the activations, so they are not bit-equal to the dequant path;
tests/test_qmatmul.py pins each path's maths against a float reference on the CPU (torch ships CPU
versions of both kernels), and the selection by device capability. Kernel shape limits (cuBLASLt,
CUDA only; oneDNN takes any shape): ``_int_mm`` needs more than 16 rows and inner/outer sizes that
are multiples of 8; ``_scaled_mm`` multiples of 16. Calls outside them take the dequant path.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch

INT_MM, SCALED_MM, ONEDNN, FBGEMM, DEQUANT = "int_mm", "scaled_mm", "onednn", "fbgemm", "dequant"
KERNEL_NAMES = {INT_MM: "int8 matmul (torch._int_mm)", SCALED_MM: "fp8 matmul (torch._scaled_mm)",
                ONEDNN: "int8 matmul (oneDNN dynamic linear)", FBGEMM: "int8 matmul (fbgemm dynamic linear)",
                DEQUANT: "dequantise + matmul"}  # fmt: skip
PACKED = (ONEDNN, FBGEMM)  # kernels that run on a prepacked weight (`pack`)
# ATen's CPU dispatch levels with vector int8 code (VNNI and AMX are the kernels' own choice above).
CPU_VECTOR_ISAS = ("AVX2", "AVX512", "ZVECTOR", "SVE256", "SVE128")
INT8_MIN_CAPABILITY = (7, 5)
FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class CpuCapability:
    """What a CPU offers 8-bit weights: ATen's vector ISA (``torch.backends.cpu.get_cpu_capability()``,
    which honours ``ATEN_CPU_CAPABILITY``), whether oneDNN's s8 x s8 matmul is exact here (probed:
    with VNNI or AMX it accumulates in int32; on plain AVX2 / AVX-512F it pairs products in int16
    with ``vpmaddubsw`` and saturates, errors of several percent), and whether fbgemm is built in."""

    isa: str
    onednn_int8_exact: bool
    engines: tuple[str, ...] = ("onednn", "fbgemm")  # torch.backends.quantized.supported_engines

    def __str__(self) -> str:
        return self.isa


Capability = tuple[int, int] | CpuCapability | None


@cache
def device_capability(device: torch.device) -> Capability:
    """CUDA compute capability of `device`; a `CpuCapability` on a CPU; None elsewhere."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)
    if device.type == "cpu":
        engines = tuple(e for e in ("onednn", "fbgemm") if e in torch.backends.quantized.supported_engines)
        return CpuCapability(cpu_isa(), _onednn_int8_exact(), engines)
    return None


def cpu_isa() -> str:
    """The vector ISA of ATen's CPU kernels ("AVX2", "AVX512", "DEFAULT", ...); it honours
    ``ATEN_CPU_CAPABILITY``, so an AVX-512 machine can be run as an AVX2 one."""
    return torch.backends.cpu.get_cpu_capability()


@cache
def _onednn_int8_exact() -> bool:
    """Both oneDNN int8 kernels anima runs, at the int8 extremes, checked against exact products:
    saturating int16 pairs (oneDNN without VNNI/AMX, or held to AVX2 by ``ONEDNN_MAX_CPU_ISA``) get
    them wrong. Each kernel is probed itself: on a Zen 2 EPYC (plain AVX2, 2026-12-07) ``_int_mm``
    (s8 x s8) was exact while ``qlinear_pointwise`` (u8 x s8) saturated, 10-36% relative error on
    random activations, so one kernel's answer says nothing about the other's."""
    if not torch.backends.mkldnn.is_available():
        return False
    a = torch.full((32, 64), 127, dtype=torch.int8)  # as u8 (+128, oneDNN's shift): 255 * 127 * 2
    b = torch.full((64, 32), 127, dtype=torch.int8)  # per pair overflows int16 where it saturates
    a[1::2] = -127  # the negative extreme too
    try:
        if not torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()):
            return False
        if "onednn" not in torch.backends.quantized.supported_engines:
            return True
        x, scale = a.float(), torch.ones(32, 1)  # per-tensor scale 1/127: u8 255 and 1 after the shift
        got = dynamic_linear(x, pack(b.t(), scale, ONEDNN), ONEDNN, scale, torch.float32)
        return bool(torch.allclose(got, x @ b.float(), rtol=1e-4))
    except RuntimeError:
        return False


def choose_kernel(fmt: str, device_type: str, capability: Capability) -> str:
    """The kernel for a weight of format `fmt` ('int8', 'fp8', 'fp8_e5m2') on a device whose
    `capability` is `device_capability`'s answer. The one place that decides."""
    if device_type == "cuda" and isinstance(capability, tuple):
        if fmt == "int8" and capability >= INT8_MIN_CAPABILITY:
            return INT_MM
        if fmt == "fp8" and capability >= FP8_MIN_CAPABILITY:
            return SCALED_MM
    if device_type == "cpu" and fmt == "int8" and isinstance(capability, CpuCapability):
        if capability.isa not in CPU_VECTOR_ISAS:
            return DEQUANT  # no vector int8 code: nothing beats the float matmul
        if capability.onednn_int8_exact:
            return ONEDNN if "onednn" in capability.engines else INT_MM
        if "fbgemm" in capability.engines:
            return FBGEMM
    return DEQUANT


def shapes_fit(
    kernel: str, rows: int, in_features: int, out_features: int, device_type: str = "cuda"
) -> bool:
    """Whether one call's shapes are inside the kernel's limits (else the call is dequantised).
    The limits are cuBLASLt's; oneDNN's CPU kernels take any shape."""
    if device_type != "cuda":
        return True
    if kernel == INT_MM:
        return rows > 16 and in_features % 8 == 0 and out_features % 8 == 0
    if kernel == SCALED_MM:
        return rows % 16 == 0 and in_features % 16 == 0 and out_features % 16 == 0
    return True


def int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation of a 2-D activation: (xq int8, sx float32 [rows, 1])."""
    # Few passes over x, none of them a bf16 -> fp32 copy: on a CPU these elementwise passes cost
    # as much as the int8 matmul itself at a few hundred tokens. The inf-norm is max|x| in one read
    # (no |x| temporary); bf16 * fp32 [rows, 1] promotes to fp32, so x/sx is exact enough to round.
    # |x/sx| <= 127 by construction (round(127.000x) is 127), so no clamp is needed.
    amax = torch.linalg.vector_norm(x, ord=float("inf"), dim=1, keepdim=True, dtype=torch.float32)
    sx = (amax / 127.0).clamp_min_(1e-12)
    return torch.mul(x, 1.0 / sx).round_().to(torch.int8), sx


def int_mm_linear(
    x2: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """[rows, in] x int8 [out, in] with scale [out, 1] or [1, 1] -> [rows, out] (the ``int_mm`` path)."""
    xq, sx = int8_rows(x2)
    acc = torch._int_mm(xq, q.t())
    out = torch.mul(acc, sx)  # int32 * fp32 -> fp32 in one pass
    return out.mul_(scale.reshape(1, -1).float()).to(out_dtype)


def pack(q: torch.Tensor, scale: torch.Tensor, kernel: str) -> object:
    """int8 [out, in] -> the packed weight of `kernel`: for ``onednn`` oneDNN's reordered int8 tensor
    (``torch.ops.onednn.qlinear_prepack``; it holds the only copy), for ``fbgemm`` fbgemm's packed
    per-channel weight (the engine is switched only while packing: the object carries its kernel)."""
    if kernel == ONEDNN:
        return torch.ops.onednn.qlinear_prepack(q.contiguous(), None)
    out = q.shape[0]
    scales = scale.reshape(-1).double().expand(out).contiguous()
    with warnings.catch_warnings():  # torch deprecates quantized tensors; fbgemm takes only them
        warnings.simplefilter("ignore")
        wq = torch._make_per_channel_quantized_tensor(q, scales, torch.zeros(out, dtype=torch.long), 0)
        with quantized_engine(kernel):
            return torch.ops.quantized.linear_prepack(wq, None)


@contextmanager
def quantized_engine(kernel: str) -> Iterator[None]:
    """torch's quantized engine set to `kernel` while open. The engine is process-wide: threads that
    pack at once open this once around all of them (`anima.runtime.quant.prepack`), and a pack inside
    it then leaves the engine alone instead of switching it back under the others."""
    engine = torch.backends.quantized.engine
    if engine == kernel:
        yield
        return
    torch.backends.quantized.engine = kernel
    try:
        yield
    finally:
        torch.backends.quantized.engine = engine


def unpack(packed: object) -> torch.Tensor:
    """The int8 [out, in] values of a `pack`ed weight (exactly those packed)."""
    if isinstance(packed, torch.Tensor):  # oneDNN's: [in, out] once made dense
        return packed.to_dense().t().contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ops.quantized.linear_unpack(packed)[0].int_repr()


def dynamic_linear(
    x2: torch.Tensor, packed: object, kernel: str, scale: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    """[rows, in] x a `pack`ed weight -> [rows, out] with dynamically quantised activations.

    ``onednn``: symmetric per-tensor 8-bit activations (u8 with zero point 128), then one
    ``qlinear_pointwise`` that multiplies in int8 and writes `out_dtype` (dequantisation fused), on
    fp32 or bf16 input alike. ``fbgemm``: its dynamic linear (fp32 in and out, 7-bit activations)."""
    if kernel == FBGEMM:
        return torch.ops.quantized.linear_dynamic(x2.float().contiguous(), packed, True).to(out_dtype)
    amax = torch.linalg.vector_norm(x2, ord=float("inf"), dtype=torch.float32)
    sx = (amax / 127.0).clamp_min_(1e-12)
    xq = torch.mul(x2, 1.0 / sx).round_().add_(128).to(torch.uint8)
    w_scale = scale.reshape(-1).float().expand(packed.shape[1]).contiguous()
    zeros = torch.zeros(packed.shape[1], dtype=torch.long)
    return torch.ops.onednn.qlinear_pointwise.tensor(
        xq, sx.reshape(()), _ZP128, packed, w_scale, zeros, None, 1.0, 0, out_dtype, "none", [], ""
    )


_ZP128 = torch.tensor(128, dtype=torch.long)


def scaled_mm_linear(
    x2: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    out_dtype: torch.dtype,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """[rows, in] x fp8 e4m3 [out, in] -> [rows, out] (the ``scaled_mm`` path)."""
    xf = x2.float()
    if input_scale is None:
        sx = (xf.abs().amax() / 448.0).clamp_min(1e-12).reshape(())
    else:
        sx = input_scale.float().reshape(()).to(x2.device)
    xq = (xf / sx).clamp_(-448.0, 448.0).to(torch.float8_e4m3fn)
    per_tensor = scale.numel() == 1
    sw = scale.float().reshape(()) if per_tensor else torch.ones((), device=x2.device)
    out = torch._scaled_mm(xq, q.t(), scale_a=sx, scale_b=sw, out_dtype=torch.float32 if not per_tensor
                           else out_dtype)  # fmt: skip
    if not per_tensor:
        out = (out * scale.reshape(1, -1).float()).to(out_dtype)
    return out


def pick(
    fmt: str, device: torch.device, rows: int, in_features: int, out_features: int, forced: str | None = None
) -> str:
    """The kernel of one call: `forced`, else the device's (`choose_kernel`); dequant outside its limits."""
    kernel = forced or choose_kernel(fmt, device.type, device_capability(device))
    return kernel if shapes_fit(kernel, rows, in_features, out_features, device.type) else DEQUANT
