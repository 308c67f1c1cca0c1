"""fp32 linears through oneDNN on plain AVX2 CPUs (`anima.runtime.cpu_gemm`): which calls it takes,
that they compute what ``F.linear`` computes, that autograd and odd layouts keep torch's own path,
and that a pipeline run uses the library its options name and leaves nothing switched on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_pipeline

from anima.errors import AnimaError
from anima.pipeline import Pipeline, RunOptions
from anima.recipe import Recipe
from anima.runtime import cpu_attention, cpu_gemm
from anima.runtime.cpu_gemm import MKL, ONEDNN, OneDNNProducts, resolve_cpu_attention, resolve_cpu_gemm

pytestmark = pytest.mark.skipif(not cpu_gemm.onednn_available(), reason="this torch has no oneDNN")
ONEDNN_OP = "mkldnn::_linear_pointwise"
FLASH_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH_OP = "aten::_scaled_dot_product_attention_math"


def _counts(fn) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages()}


def _ops(fn) -> set[str]:
    return set(_counts(fn))


def test_auto_keeps_mkl_only_on_intel_avx512_and_below_avx2(monkeypatch) -> None:
    cases = (
        ("AVX2", "GenuineIntel", ONEDNN), ("AVX2", "AuthenticAMD", ONEDNN),
        ("AVX512", "GenuineIntel", MKL), ("AVX512", "AuthenticAMD", ONEDNN), ("AVX512", "", ONEDNN),
        ("DEFAULT", "GenuineIntel", MKL), ("DEFAULT", "AuthenticAMD", MKL),
    )  # fmt: skip
    for isa, vendor, want in cases:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda isa=isa: isa)
        monkeypatch.setattr(cpu_gemm, "cpu_vendor", lambda vendor=vendor: vendor)
        assert resolve_cpu_gemm("auto") == want, (isa, vendor)
        # attention only where measured: AVX-512 CPUs other than Intel's
        assert resolve_cpu_attention("auto") == (isa == "AVX512" and vendor != "GenuineIntel"), (isa, vendor)
    assert resolve_cpu_attention("onednn") and not resolve_cpu_attention("mkl")
    assert resolve_cpu_gemm("onednn") == ONEDNN and resolve_cpu_gemm("mkl") == MKL
    monkeypatch.setattr(cpu_gemm, "onednn_available", lambda: False)
    assert resolve_cpu_gemm("onednn") == MKL  # a torch without oneDNN keeps MKL
    with pytest.raises(AnimaError, match="mkl"):
        resolve_cpu_gemm("blas")
    with pytest.raises(AnimaError, match="CPU matmul library"):
        RunOptions(cpu_gemm="openblas")


@torch.no_grad()
def test_eligible_linears_run_onednn_with_the_same_numbers() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 70, 64, generator=g), torch.randn(96, 64, generator=g)
    b = torch.randn(96, generator=g)
    layer = torch.nn.Linear(64, 96)
    with OneDNNProducts():
        ours, ours_b, ours_mod = F.linear(x, w), F.linear(x, w, b), layer(x)
        assert ONEDNN_OP in _ops(lambda: F.linear(x, w, bias=b))
        assert ONEDNN_OP in _ops(lambda: layer(x))
        odd = F.linear(x.transpose(0, 1), w)  # a non-contiguous input is taken as it is
    torch.testing.assert_close(ours, F.linear(x, w), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_b, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_mod, layer(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(odd, F.linear(x.transpose(0, 1), w), rtol=1e-5, atol=1e-5)
    assert ONEDNN_OP not in _ops(lambda: F.linear(x, w))  # nothing is left switched on


def test_autograd_odd_layouts_and_other_dtypes_keep_torchs_linear() -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(5, 32, generator=g), torch.randn(48, 32, generator=g)
    broadcast_bias = torch.randn(1, generator=g).expand(48)  # stride 0: oneDNN would misread it
    with OneDNNProducts():
        wg = w.clone().requires_grad_(True)
        F.linear(x, wg).sum().backward()  # training: MKL and its backward
        with torch.no_grad():
            for args in ((x, broadcast_bias), (x.bfloat16(), None), (torch.randn(32), None),
                         (torch.randn(0, 32), None), (x, None, w.t().contiguous().t())):  # fmt: skip
                wt = (args[2] if len(args) > 2 else w).to(args[0].dtype)
                assert ONEDNN_OP not in _ops(lambda a=args, wt=wt: F.linear(a[0], wt, a[1]))
            got = F.linear(x, w, broadcast_bias)
    torch.testing.assert_close(wg.grad, x.sum(0).expand(48, 32))
    torch.testing.assert_close(got, F.linear(x, w, broadcast_bias))


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Pipeline]:
    return {name: tiny_pipeline(cpu_gemm=name) for name in (MKL, ONEDNN)}


def test_a_pipeline_run_uses_the_library_its_options_name(pipelines, monkeypatch) -> None:
    monkeypatch.setattr(cpu_attention, "MIN_HEAD_WORK", 0)  # the tiny model's heads are small
    recipe = Recipe(prompt="red circle", negative_prompt="blurry", width=64, height=64, steps=2, seed=3,
                    sampler="euler", cfg=4.0)  # fmt: skip
    images, seen = {}, {}
    for name, pipe in pipelines.items():
        seen[name] = _counts(lambda p=pipe, n=name: images.__setitem__(n, p.generate(recipe).images))
    assert ONEDNN_OP in seen[ONEDNN] and ONEDNN_OP not in seen[MKL]
    torch_attention = {n: sum(seen[n].get(op, 0) for op in (FLASH_OP, MATH_OP)) for n in seen}
    # the self-attentions leave torch's kernels; masked ones (text encoder, shared-padding key) stay
    assert 0 < torch_attention[ONEDNN] < torch_attention[MKL]
    assert (images[MKL] - images[ONEDNN]).abs().max() <= 1 / 255  # float32 summation order only
    x = torch.randn(4, 8)
    assert ONEDNN_OP not in _ops(lambda: F.linear(x, torch.randn(8, 8)))  # the run switched it off
