"""The 8-bit matmul dispatch (anima.model.qmatmul): kernel choice by device, and each kernel's maths.

No GPU is needed: torch ships CPU implementations of `_int_mm` and `_scaled_mm`, so the int8 and
fp8 paths run here with the kernel forced, against float references. (Whether they are *faster*
can only be measured on a GPU; nothing here times anything.)
"""

from __future__ import annotations

import pytest
import torch

from anima.model import qmatmul
from anima.model.qmatmul import CpuCapability
from anima.model.quant_linear import QuantLinear, hadamard, quantize_weight, rotate_groups


@pytest.mark.parametrize(
    ("fmt", "device", "cap", "kernel"),
    [
        ("int8", "cpu", None, "dequant"),
        ("int8", "cpu", CpuCapability("DEFAULT", True), "dequant"),  # no vector int8 code
        ("int8", "cpu", CpuCapability("AVX512", True), "onednn"),  # VNNI / AMX: exact oneDNN
        ("int8", "cpu", CpuCapability("AVX2", True), "onednn"),  # AVX-VNNI
        ("int8", "cpu", CpuCapability("AVX512", True, ("fbgemm",)), "int_mm"),  # torch without the engine
        ("int8", "cpu", CpuCapability("AVX2", False), "fbgemm"),  # plain AVX2: oneDNN saturates
        ("int8", "cpu", CpuCapability("AVX2", False, ("onednn",)), "dequant"),
        ("fp8", "cpu", CpuCapability("AVX512", True), "dequant"),
        ("int8", "cuda", (7, 0), "dequant"),  # Volta: no int8 tensor-core GEMM in cuBLASLt
        ("int8", "cuda", (7, 5), "int_mm"),
        ("int8", "cuda", (9, 0), "int_mm"),
        ("fp8", "cuda", (8, 6), "dequant"),  # Ampere has no fp8 tensor cores
        ("fp8", "cuda", (8, 9), "scaled_mm"),
        ("fp8", "cuda", (12, 0), "scaled_mm"),
        ("fp8_e5m2", "cuda", (9, 0), "dequant"),
    ],
)
def test_kernel_choice_by_device_capability(fmt, device, cap, kernel) -> None:
    assert qmatmul.choose_kernel(fmt, device, cap) == kernel


def test_shape_limits_send_small_calls_to_the_fallback() -> None:
    assert qmatmul.shapes_fit("int_mm", 17, 64, 64) and not qmatmul.shapes_fit("int_mm", 16, 64, 64)
    assert not qmatmul.shapes_fit("int_mm", 64, 60, 64)
    assert qmatmul.shapes_fit("scaled_mm", 32, 64, 48) and not qmatmul.shapes_fit("scaled_mm", 33, 64, 48)
    assert qmatmul.pick("int8", torch.device("cuda"), 64, 64, 64, forced="int_mm") == "int_mm"
    assert qmatmul.pick("int8", torch.device("cuda"), 8, 64, 64, forced="int_mm") == "dequant"
    # oneDNN takes any shape: on a CPU a few rows or odd sizes keep the int8 kernel.
    assert qmatmul.pick("int8", torch.device("cpu"), 3, 60, 20, forced="int_mm") == "int_mm"


def _weight(out_f=96, in_f=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * torch.linspace(0.2, 2.0, out_f)[:, None]


def _cpu_scaled_mm() -> bool:
    """Whether this CPU's oneDNN builds an fp8 matmul (not below AVX-512)."""
    a = torch.zeros(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(()), scale_b=torch.ones(()), out_dtype=torch.float32)
        return True
    except RuntimeError:
        return False


CPU_CAP = qmatmul.device_capability(torch.device("cpu"))
# On plain AVX2 oneDNN's int8 matmul saturates (anima then picks fbgemm) and it has no fp8 matmul:
# those kernels' CPU stand-ins for the GPU paths cannot be checked there.
needs_exact_int_mm = pytest.mark.skipif(not CPU_CAP.onednn_int8_exact, reason="oneDNN int8 saturates here")
needs_onednn = pytest.mark.skipif(
    not CPU_CAP.onednn_int8_exact or "onednn" not in CPU_CAP.engines, reason="no exact oneDNN int8 here"
)
needs_fbgemm = pytest.mark.skipif("fbgemm" not in CPU_CAP.engines, reason="no fbgemm")
needs_scaled_mm = pytest.mark.skipif(not _cpu_scaled_mm(), reason="no CPU fp8 matmul here")


@needs_exact_int_mm
def test_int_mm_path_is_exact_integer_maths_and_close_to_float() -> None:
    w = _weight()
    q, scale = quantize_weight(w, "int8")
    x = torch.randn(40, 256, generator=torch.Generator().manual_seed(1))
    got = qmatmul.int_mm_linear(x, q, scale, torch.float32)
    # The same maths spelled out: per-row activation scales, an exact integer product, two scalings.
    xq, sx = qmatmul.int8_rows(x)
    assert (xq.float() - x / sx).abs().max() <= 0.5 + 1e-6  # round to nearest
    emulated = (xq.long() @ q.long().t()).float() * sx * scale.reshape(1, -1)
    assert torch.equal(got, emulated)  # integer accumulation is exact: no rounding to disagree on
    ref = x @ w.t()
    rel = ((got - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.02  # weights and activations both rounded to 8 bits


@needs_scaled_mm
@pytest.mark.parametrize("per_tensor", [True, False])
def test_scaled_mm_path_matches_an_fp8_emulation(per_tensor) -> None:
    w = _weight(out_f=64, in_f=128)
    q, scale = quantize_weight(w, "fp8", per_channel=not per_tensor)
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(2))
    got = qmatmul.scaled_mm_linear(x, q, scale, torch.float32)
    sx = x.abs().amax() / 448.0
    xq = (x / sx).to(torch.float8_e4m3fn)
    emulated = (xq.float() @ q.float().t()) * sx * scale.reshape(1, -1)
    # fp8 x fp8 products are exact in fp32; only the summation order of the kernel may differ.
    assert torch.allclose(got, emulated, rtol=1e-5, atol=1e-5 * emulated.abs().max().item())
    ref = x @ w.t()
    assert ((got - ref).norm() / ref.norm()).item() < 0.08
    static = qmatmul.scaled_mm_linear(x, q, scale, torch.float32, input_scale=torch.tensor(sx.item()))
    assert torch.allclose(static, got, rtol=1e-5, atol=1e-5 * got.abs().max().item())


# ConvRot files are int8 only: the rotation is tested on the int8 kernel.
@pytest.mark.parametrize(
    ("kernel", "rotation"),
    [
        pytest.param("int_mm", 0, marks=needs_exact_int_mm),
        pytest.param("int_mm", 64, marks=needs_exact_int_mm),
        pytest.param(
            "fbgemm", 64, marks=pytest.mark.skipif("fbgemm" not in CPU_CAP.engines, reason="no fbgemm")
        ),
        pytest.param("onednn", 0, marks=needs_onednn),
        pytest.param("scaled_mm", 0, marks=needs_scaled_mm),
    ],
)
def test_quant_linear_kernels_agree_with_the_dequant_path(kernel, rotation) -> None:
    w = _weight(out_f=64, in_f=256)
    fmt = "fp8" if kernel == "scaled_mm" else "int8"
    stored = rotate_groups(w, hadamard(rotation)) if rotation else w
    q, scale = quantize_weight(stored, fmt, per_channel=fmt == "int8")
    layer = QuantLinear(q, scale, fmt, torch.float32, rotation=rotation)
    x = torch.randn(2, 24, 256, generator=torch.Generator().manual_seed(3))
    layer.kernel = "dequant"
    dense = layer(x)
    layer.kernel = kernel
    fast = layer(x)
    assert fast.shape == dense.shape == (2, 24, 64)
    assert ((fast - dense).norm() / dense.norm()).item() < 0.05
    assert ((dense - x @ w.t()).norm() / dense.norm()).item() < 0.05  # the rotation undone correctly
