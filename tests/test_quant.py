"""8-bit weights (anima.runtime.quant): error against bf16 on the tiny fixture, memory saved, layout."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, load_st
from test_dit import CASES, build, tiny_dit_state
from torch import nn

from anima.errors import AnimaError
from anima.model import qmatmul, quant_linear
from anima.runtime.quant import BLOCK_LINEARS, QuantLinear, quantize_dit, quantize_weight

# Max-abs velocity error relative to the velocity's max, measured on the tiny fixture: int8 1.3%,
# fp8 4.4% (bf16 itself is ~0.9% from fp32). Bounds leave ~2x margin.
BOUNDS = {"int8": 0.03, "fp8": 0.09}
# CPUs run int8 on a real int8 matmul whose activations are quantised per tensor: measured 3.2% on
# oneDNN (8-bit, VNNI/AMX), 4.9% on fbgemm (7-bit, plain AVX2).
_KERNEL = qmatmul.choose_kernel("int8", "cpu", qmatmul.device_capability(torch.device("cpu")))
BOUNDS["int8"] = {qmatmul.ONEDNN: 0.05, qmatmul.FBGEMM: 0.08}.get(_KERNEL, BOUNDS["int8"])


@pytest.fixture(scope="module")
def bf16_model():
    return build(tiny_dit_state()).to(torch.bfloat16)


@pytest.fixture(scope="module")
def inputs():
    fx = load_st(TINY / "components" / "dit.safetensors")
    ctx = load_st(TINY / "components" / "adapter.safetensors")[f"{CASES['c0']}.context"]
    return fx["c0.x"], fx["c0.sigma"], ctx


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_round_trip_error(fmt, per_channel):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.linspace(0.1, 3.0, 64)[:, None]  # uneven channels
    q, scale = quantize_weight(w, fmt, per_channel)
    assert q.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[fmt]
    assert scale.shape == ((64, 1) if per_channel else (1, 1))
    err = ((q.float() * scale - w).norm() / w.norm()).item()
    bound = {"int8": 0.01 if per_channel else 0.03, "fp8": 0.04}[fmt]
    print(f"{fmt} per_channel={per_channel}: relative weight error {err:.4f}")
    assert 0 < err < bound


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@torch.no_grad()
def test_quantized_dit_error_vs_bf16(bf16_model, inputs, fmt):
    x, sigma, ctx = inputs
    ref = bf16_model(x, sigma, ctx)
    q = copy.deepcopy(bf16_model)
    report = quantize_dit(q, fmt)
    assert report.layers == len(q.blocks) * len(BLOCK_LINEARS)
    assert report.bytes_after < 0.52 * report.bytes_before  # 1 byte + scales instead of 2
    assert isinstance(q.blocks[0].mlp.layer1, QuantLinear)
    assert type(q.blocks[0].adaln_modulation_mlp[1]) is nn.Linear  # left in bf16
    out = q(x, sigma, ctx)
    assert out.dtype == ref.dtype and torch.isfinite(out).all()
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    print(f"{fmt}: velocity max-abs error {rel:.4f} of max (saved {report.saved_gb * 1024:.2f} MiB)")
    assert 0 < rel < BOUNDS[fmt]


@torch.no_grad()
def test_quant_linear_paths_agree_and_dequantize():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(96, 48, bias=False).to(torch.bfloat16)
    lin.weight.copy_(torch.randn(48, 96, generator=g))
    q = QuantLinear.from_linear(lin, "int8")
    q.kernel = "dequant"  # the two dequantising paths (CPUs now default to oneDNN's int8 matmul)
    few = torch.randn(3, 96, generator=g).bfloat16()  # output-scaling path (rows < in_features)
    many = torch.randn(200, 96, generator=g).bfloat16()  # weight-dequantising path
    dense = q.dequantize()
    assert dense.dtype == torch.bfloat16 and dense.shape == (48, 96)
    for xin in (few, many):
        ref = nn.functional.linear(xin.float(), dense.float())
        assert (q(xin).float() - ref).abs().max() <= 0.01 * ref.abs().max()  # bf16 rounding only


def test_quantize_skips_wrapped_layers_and_rejects_bad_input(bf16_model):
    class Wrapper(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x)

    m = copy.deepcopy(bf16_model)
    m.blocks[0].self_attn.q_proj = Wrapper(m.blocks[0].self_attn.q_proj)
    report = quantize_dit(m, "int8")
    assert report.layers == len(m.blocks) * len(BLOCK_LINEARS) - 1
    assert type(m.blocks[0].self_attn.q_proj.base) is nn.Linear
    with pytest.raises(AnimaError, match="int8 or fp8"):
        quantize_dit(m, "nf4")
    with pytest.raises(AnimaError, match="bias-free"):
        QuantLinear.from_linear(nn.Linear(4, 4), "int8")


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_big_cpu_weights_are_quantised_in_row_chunks_with_the_same_bits(fmt, dtype) -> None:
    """Over 256 rows a CPU weight is quantised 256 rows at a time (`_quantize_rows`); slices of 100
    rows take the whole-matrix path, so their results stacked are the reference, bit for bit."""
    g = torch.Generator().manual_seed(7)
    w = (torch.randn(700, 96, generator=g) * torch.rand(700, 1, generator=g)).to(dtype)
    w[3] = 0  # an all-zero row: the scale's floor
    w[500, 5] = 300.0  # an outlier row
    w[600, 7] = -400.0  # one whose largest magnitude is negative
    before = w.clone()
    q, scale = quantize_weight(w, fmt)
    parts = [quantize_weight(w[i : i + 100], fmt) for i in range(0, 700, 100)]
    assert torch.equal(w, before)  # the caller's weight is never divided in place
    assert torch.equal(q.view(torch.int8), torch.cat([p[0] for p in parts]).view(torch.int8))
    assert torch.equal(scale, torch.cat([p[1] for p in parts]))
    assert q.dtype == quant_linear.FORMATS[fmt] and scale.dtype == torch.float32
