"""Which library multiplies a CPU run's fp32 linears (MKL, torch's default, or oneDNN), and whether
its attention runs as oneDNN products (`anima.runtime.cpu_attention`) instead of torch's flash kernel.

Why: ``F.linear`` on a CPU calls MKL's sgemm. On plain AVX2 CPUs oneDNN's brgemm kernels
(``torch.ops.mkldnn._linear_pointwise``, the op torch's own CPU compiler emits for linears) are
faster on every shape the DiT and the text encoder have. Measured 2026-12-07 on a 2-core AMD EPYC
(Zen 2, ATen AVX2, torch 2.13: MKL 2024.2, oneDNN 3.12), best of 6 interleaved, GFLOP/s MKL against
oneDNN: rows x in -> out 2048 x 2048 -> 6144 (fused QKV at 512x512 with CFG) 141 / 153,
2048 x 2048 -> 2048 147 / 166, 512 x 2048 -> 8192 (an MLP chunk) 133 / 151, 512 x 8192 -> 2048
144 / 147; three full-width DiT blocks at 512x512, batch 2: 5.66 s against 5.37 s. MKL is Intel's
library and takes its AVX-512 kernels on Intel CPUs only: on a 2-core AMD EPYC Zen 5 (ATen AVX512,
2026-12-08, same shapes) it ran at 207-225 GFLOP/s against oneDNN's 442-486, the AVX2 rate. So
``auto`` keeps MKL only on Intel CPUs that ATen runs with AVX-512 (where it was measured at the
bench's matmul floor, bench/README.md, but not against oneDNN) and takes oneDNN everywhere else;
``onednn`` forces it anywhere oneDNN is built in, ``mkl`` keeps torch's default.

How: `cpu_products` is a `TorchFunctionMode` a pipeline enters while it runs a recipe on a CPU (as it
does `anima.weights.mapped_pages.reused_heap`), so the model modules keep calling ``F.linear`` and
stay pure. Only calls oneDNN takes exactly as ``F.linear`` means them are rerouted: float32 CPU
tensors, no autograd (a training step keeps MKL and its backward), a non-empty input of 2 or more
dims, a contiguous 2-D weight and a contiguous bias (oneDNN misreads a broadcast, stride-0 bias).
The products are the same maths in another summation order: float32 rounding differs (about 1e-6
relative), so a run is repeatable with the same library, not bit-equal across the two. Attention is
rerouted the same way (`resolve_cpu_attention`, `cpu_attention.takes`), on the CPUs it was measured
faster on.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from anima.errors import AnimaError
from anima.runtime import cpu_attention
from anima.runtime.cpu_info import cpu_field

AUTO, MKL, ONEDNN = "auto", "mkl", "onednn"
CPU_GEMMS = (AUTO, MKL, ONEDNN)


def check_cpu_gemm(name: str) -> str:
    """`name` if it is one of `CPU_GEMMS`, else a one-line error."""
    if name not in CPU_GEMMS:
        choices = ", ".join(CPU_GEMMS)
        raise AnimaError(f"CPU matmul library must be {choices}; got {name!r}", setting="cpu_gemm")
    return name


@cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's fp32 linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def cpu_vendor() -> str:
    """The CPU's vendor string ('GenuineIntel', 'AuthenticAMD', ...); '' where unknown."""
    return cpu_field("vendor_id")


def _intel_avx512(isa: str) -> bool:
    return isa.startswith("AVX512") and cpu_vendor() == "GenuineIntel"


def resolve_cpu_gemm(name: str) -> str:
    """'auto' -> MKL on Intel CPUs that ATen runs with AVX-512, oneDNN on every other x86 CPU with
    AVX2 or more (measured faster, module docstring), MKL below AVX2; 'onednn' falls back to MKL
    where this torch has no oneDNN."""
    check_cpu_gemm(name)
    if name == AUTO:
        isa = torch.backends.cpu.get_cpu_capability()
        vector = isa == "AVX2" or isa.startswith("AVX512")
        name = ONEDNN if vector and not _intel_avx512(isa) else MKL
    return ONEDNN if name == ONEDNN and onednn_available() else MKL


def resolve_cpu_attention(name: str) -> bool:
    """Whether a CPU run's attention goes through `anima.runtime.cpu_attention` instead of torch's
    flash kernel: 'auto' -> on AVX-512 CPUs other than Intel's (measured there, that module's
    docstring; on plain AVX2 and on Intel's AVX-512 it was not), 'onednn' -> yes, 'mkl' -> no."""
    if resolve_cpu_gemm(name) != ONEDNN:
        return False
    # auto took oneDNN, so this is not Intel's AVX-512: of the rest, AVX-512 only
    return name != AUTO or torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _onednn_takes(x: Any, w: Any, b: Any) -> bool:
    return (
        isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
        and x.device.type == "cpu" and w.device.type == "cpu"
        and x.dtype == torch.float32 and w.dtype == torch.float32
        and x.dim() >= 2 and x.numel() > 0 and w.dim() == 2 and w.is_contiguous()
        and (b is None or (isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.is_contiguous()
                           and b.device.type == "cpu"))
    )  # fmt: skip


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _flash_wanted() -> bool:
    """No autograd, and torch would take its flash kernel (not held to the math kernel by
    ``sdpa_kernel``, as anima's ``math`` attention backend does to debug numerics)."""
    return not torch.is_grad_enabled() and torch.backends.cuda.flash_sdp_enabled()


class OneDNNProducts(TorchFunctionMode):
    """While entered (in this thread), eligible ``F.linear`` calls run oneDNN's fp32 linear
    (`linears`) and eligible ``F.scaled_dot_product_attention`` calls `cpu_attention.attention`
    (`attention`). Calls under autograd keep torch's own kernels and their backward."""

    def __init__(self, *, linears: bool = True, attention: bool = False) -> None:
        super().__init__()
        self._linears, self._attention = linears, attention

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.linear and self._linears and not torch.is_grad_enabled():
            x, w, b = (_arg(args, kwargs, i, n) for i, n in enumerate(("input", "weight", "bias")))
            if _onednn_takes(x, w, b):
                return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        if func is F.scaled_dot_product_attention and self._attention and _flash_wanted():
            q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
            call = (
                _arg(args, kwargs, 3, "attn_mask"), _arg(args, kwargs, 4, "dropout_p", 0.0),
                _arg(args, kwargs, 5, "is_causal", False), _arg(args, kwargs, 6, "scale"),
                kwargs.get("enable_gqa", False),
            )  # fmt: skip
            if cpu_attention.takes(q, k, v, *call):
                return cpu_attention.attention(q, k, v)
        return func(*args, **kwargs)


def cpu_products(name: str) -> AbstractContextManager:
    """The context a CPU run's forwards go in: `OneDNNProducts` where `resolve_cpu_gemm` says oneDNN
    (with attention where `resolve_cpu_attention` says so), else nothing."""
    if resolve_cpu_gemm(name) != ONEDNN:
        return nullcontext()
    return OneDNNProducts(attention=resolve_cpu_attention(name))
