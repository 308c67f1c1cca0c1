"""The CPU int8 path (issue 19): oneDNN's int8 matmul chosen on CPUs, its maths against the
dequantised float matmul, 8-bit loading without a compute-dtype copy, GGUF Q8_0 layers on the int8
kernel, and the choice recorded in the recipe.

Nothing here compares floats bit for bit across ISAs: oneDNN picks AMX, VNNI or AVX2 code, whose
integer products are exact but whose float epilogues may round differently; bounds are relative.
"""

from __future__ import annotations

import copy
import itertools
import threading

import gguf
import pytest
import torch
from conftest import TINY, load_st
from test_dit import CASES, build, tiny_dit_state
from torch import nn

from anima.model import qmatmul
from anima.model.ggml_modules import GGMLLinear
from anima.model.quant_linear import QuantLinear, quantize_weight
from anima.runtime.quant import (
    cast_unquantized,
    has_int8_kernel,
    matmul_record,
    prepack,
    quantize_dit,
    requantize_q8_0,
)

CPU = torch.device("cpu")
KERNEL = qmatmul.choose_kernel("int8", "cpu", qmatmul.device_capability(CPU))
needs_int8 = pytest.mark.skipif(KERNEL == qmatmul.DEQUANT, reason="no int8 matmul on this CPU")


@needs_int8
def test_cpus_get_an_int8_kernel_of_any_shape() -> None:
    cap = qmatmul.device_capability(CPU)
    assert str(cap) == qmatmul.cpu_isa()
    assert KERNEL == (qmatmul.ONEDNN if cap.onednn_int8_exact else qmatmul.FBGEMM)
    assert qmatmul.pick("int8", CPU, 3, 60, 20) == KERNEL  # oneDNN and fbgemm take any shape
    assert qmatmul.pick("fp8", CPU, 64, 64, 64) == qmatmul.DEQUANT
    assert has_int8_kernel(CPU)


def _layer_case(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(192, 256, generator=g) * torch.linspace(0.2, 2.0, 192)[:, None]
    q, scale = quantize_weight(w, "int8")
    x = torch.randn(2, 37, 256, generator=g).to(dtype)
    return q, scale, x, x.float() @ (q.float() * scale).t()  # dequantised weights, float32 matmul


@needs_int8
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_int8_layer_is_close_to_the_dequantised_matmul(dtype) -> None:
    q, scale, x, ref = _layer_case(dtype)
    layer = QuantLinear(q, scale, "int8", dtype)
    fast = layer(x)  # this CPU's default kernel
    assert fast.dtype == dtype and fast.shape == (2, 37, 192)
    rel = ((fast.float() - ref).norm() / ref.norm()).item()
    # only the activations' rounding: 8-bit per tensor (oneDNN), 7-bit per tensor (fbgemm)
    assert 0 < rel < (0.015 if KERNEL == qmatmul.ONEDNN else 0.04)


@needs_int8
def test_the_chosen_kernel_does_not_saturate_at_the_int8_extremes() -> None:
    """Activations at +max (u8 255 after oneDNN's shift) against weights at +-127: where pairs of
    products add in saturating int16 (oneDNN's u8 x s8 kernel on a Zen 2 without VNNI) the result is
    off by up to 99%; the kernel this CPU is given must hold, and on all-positive activations too."""
    q = torch.full((64, 256), 127, dtype=torch.int8)
    q[1::2] = -127
    scale = torch.full((64, 1), 0.01)
    x = torch.ones(8, 256)
    x[1::2] = -1.0
    g = torch.Generator().manual_seed(5)
    positive = torch.rand(16, 256, generator=g)
    for act in (x, positive):
        layer = QuantLinear(q.clone(), scale.clone(), "int8", torch.float32)
        ref = act @ (q.float() * scale).t()
        rel = ((layer(act) - ref).norm() / ref.norm()).item()
        assert rel < 0.02, (KERNEL, rel)


@pytest.mark.skipif(not qmatmul.device_capability(CPU).onednn_int8_exact, reason="oneDNN int8 saturates here")
def test_onednn_int8_product_is_exact() -> None:
    q, scale, x, _ = _layer_case(torch.float32)
    x2 = x.reshape(-1, 256)
    xq, sx = qmatmul.int8_rows(x2)
    emulated = (xq.long() @ q.long().t()).float() * sx * scale.reshape(1, -1)
    got = qmatmul.int_mm_linear(x2, q, scale, torch.float32)
    assert torch.allclose(got, emulated, rtol=1e-6, atol=1e-6 * emulated.abs().max().item())


@pytest.mark.parametrize("kernel", [qmatmul.ONEDNN, qmatmul.FBGEMM])
def test_packed_kernels_keep_one_copy_and_give_the_weight_back(kernel) -> None:
    if kernel not in qmatmul.device_capability(CPU).engines:
        pytest.skip(f"torch built without {kernel}")
    q, scale, x, ref = _layer_case(torch.float32)
    layer = QuantLinear(q.clone(), scale, "int8", torch.float32)
    layer.kernel = kernel
    out = layer(x)
    assert out.shape == (2, 37, 192) and layer._packed is not None
    assert layer.weight.numel() == 0  # the packed copy is the only one
    rel = ((out - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.04
    assert torch.equal(layer.int8_weight(), q) and torch.equal(layer.state_dict()["weight"], q)
    assert torch.equal(layer.dequantize(), (q.float() * scale).float())
    layer.to(torch.device("cpu"))  # a move unpacks (the packed object follows no device)
    assert layer._packed is None and torch.equal(layer.weight, q)


@torch.no_grad()
def test_prepack_packs_every_layer_on_threads_with_the_same_values(monkeypatch) -> None:
    """`prepack` on fbgemm's threads: every layer packed (one copy), the int8 values those it was
    given, the layers' outputs those of packing one by one, the process's quantized engine as before."""
    if qmatmul.FBGEMM not in qmatmul.device_capability(CPU).engines:
        pytest.skip("torch built without fbgemm")
    dit = build(tiny_dit_state())
    quantize_dit(dit, "int8")
    layers = [m for m in dit.modules() if isinstance(m, QuantLinear)]
    for m in layers:
        m.kernel = qmatmul.FBGEMM
    values = [m.weight.clone() for m in layers]
    serial = copy.deepcopy(dit)
    for m in serial.modules():
        if isinstance(m, QuantLinear):
            m.prepack()
    threads: set[int] = set()
    real = QuantLinear.prepack
    calls = itertools.count()
    both = threading.Barrier(2, timeout=10)

    def recording(self) -> bool:
        threads.add(threading.get_ident())
        if next(calls) < 2:  # the first two packs wait for each other: two workers at once, or a timeout
            both.wait()
        return real(self)

    monkeypatch.setattr(QuantLinear, "prepack", recording)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    engine = torch.backends.quantized.engine
    assert prepack(dit) == len(layers)
    assert torch.backends.quantized.engine == engine
    assert len(threads - {threading.get_ident()}) == 2  # the blocks' layers went to two workers
    assert all(m.weight.numel() == 0 for m in layers)
    assert all(torch.equal(m.int8_weight(), v) for m, v in zip(layers, values, strict=True))
    x = torch.randn(1, 40, layers[0].in_features, generator=torch.Generator().manual_seed(4))
    packed_serially = [m for m in serial.modules() if isinstance(m, QuantLinear)]
    assert torch.equal(layers[0](x), packed_serially[0](x))


@torch.no_grad()
def test_quantize_from_the_file_dtype_casts_the_rest_and_keeps_scales_fp32() -> None:
    """An fp32 run with 8-bit weights from a bf16 DiT: no fp32 copy of the quantised layers."""
    bf16 = build(tiny_dit_state()).to(torch.bfloat16)
    direct = copy.deepcopy(bf16).float()
    quantize_dit(direct, "int8")  # the old order: cast everything, then quantise
    lazy = copy.deepcopy(bf16)
    quantize_dit(lazy, "int8", compute_dtype=torch.float32)
    layer = lazy.blocks[0].mlp.layer1
    assert isinstance(layer, QuantLinear) and layer.compute_dtype == torch.float32
    assert layer.scale.dtype == torch.float32 and layer.weight.dtype == torch.int8
    floats = [t for m in lazy.modules() if not isinstance(m, QuantLinear)
              for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))
              if t.is_floating_point()]  # fmt: skip
    assert floats and all(t.dtype == torch.float32 for t in floats)
    fx = load_st(TINY / "components" / "dit.safetensors")
    ctx = load_st(TINY / "components" / "adapter.safetensors")[f"{CASES['c0']}.context"]
    a, b = direct(fx["c0.x"], fx["c0.sigma"], ctx), lazy(fx["c0.x"], fx["c0.sigma"], ctx)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())  # same weights, same kernel


def test_cast_unquantized_leaves_8bit_layers_alone() -> None:
    q, scale = quantize_weight(torch.randn(8, 16), "fp8")
    model = nn.Sequential(nn.Linear(16, 16).bfloat16(), QuantLinear(q, scale, "fp8", torch.bfloat16))
    cast_unquantized(model, torch.float32)
    assert model[0].weight.dtype == torch.float32 and isinstance(model[0].weight, nn.Parameter)
    assert model[1].weight.dtype == torch.float8_e4m3fn and model[1].scale.dtype == torch.float32


@torch.no_grad()
def test_gguf_q8_0_layers_move_onto_the_int8_kernel() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 128, generator=g)
    blocks = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    model = nn.Module()
    model.proj = GGMLLinear(torch.from_numpy(blocks), "Q8_0", 128, torch.float32)
    x = torch.randn(5, 128, generator=g)
    before = model.proj(x)
    assert requantize_q8_0(model, torch.float32) == 1
    assert isinstance(model.proj, QuantLinear) and model.proj.weight.dtype == torch.int8
    rel = ((model.proj(x) - before).norm() / before.norm()).item()
    assert rel < 0.02  # a second per-row rounding of the weights (+ activations on the int8 kernel)


def test_the_matmul_choice_is_recorded() -> None:
    model = nn.Module()
    assert matmul_record(model, CPU) == ""
    q, scale = quantize_weight(torch.randn(8, 16), "int8")
    model.proj = QuantLinear(q, scale, "int8", torch.float32)
    note = matmul_record(model, CPU)
    assert note == f"int8: {qmatmul.KERNEL_NAMES[KERNEL]} on {qmatmul.cpu_isa()}"


def test_a_forced_dequant_kernel_runs_and_is_recorded() -> None:
    """`weights_kernel="dequant"`: how CPUs ran 8-bit weights before the int8 kernels (old PNGs
    re-run that way): exactly the dequantised weight's matmul, and recorded as such."""
    from anima.errors import AnimaError
    from anima.pipeline.options import RunOptions

    g = torch.Generator().manual_seed(3)
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=g))
    model = nn.Module()
    model.proj = QuantLinear.from_linear(
        linear, "int8", compute_dtype=torch.float32, kernel=qmatmul.DEQUANT
    )
    x = torch.randn(5, 64, generator=g)
    torch.testing.assert_close(model.proj(x), x @ model.proj.dequantize().t(), rtol=1e-5, atol=1e-5)
    assert model.proj._packed is None  # no CPU int8 kernel packed the weight
    name = qmatmul.KERNEL_NAMES[qmatmul.DEQUANT]
    assert matmul_record(model, CPU) == f"int8: {name} on {qmatmul.cpu_isa()}"
    assert RunOptions(weights="int8", weights_kernel="dequant").weights_kernel == "dequant"
    with pytest.raises(AnimaError, match="weights kernel"):
        RunOptions(weights="int8", weights_kernel="onednn")
