"""Which library multiplies a CPU run's fp32 linears: MKL (torch's default) or oneDNN.

Why: ``F.linear`` on a CPU calls MKL's sgemm. On plain AVX2 CPUs oneDNN's brgemm kernels
(``torch.ops.mkldnn._linear_pointwise``, the op torch's own CPU compiler emits for linears) are
faster on every shape the DiT and the text encoder have. Measured 2026-12-07 on a 2-core AMD EPYC
(Zen 2, ATen AVX2, torch 2.13: MKL 2024.2, oneDNN 3.12), best of 6 interleaved, GFLOP/s MKL against
oneDNN: rows x in -> out 2048 x 2048 -> 6144 (fused QKV at 512x512 with CFG) 141 / 153,
2048 x 2048 -> 2048 147 / 166, 512 x 2048 -> 8192 (an MLP chunk) 133 / 151, 512 x 8192 -> 2048
144 / 147; three full-width DiT blocks at 512x512, batch 2: 5.66 s against 5.37 s. On AVX-512
machines MKL's kernels are already at the matmul floor (bench/README.md) and nothing was measured
against oneDNN there, so ``auto`` keeps MKL; ``onednn`` forces it anywhere oneDNN is built in.

How: `cpu_linears` is a `TorchFunctionMode` a pipeline enters while it runs a recipe on a CPU (as it
does `anima.weights.mapped_pages.reused_heap`), so the model modules keep calling ``F.linear`` and
stay pure. Only calls oneDNN takes exactly as ``F.linear`` means them are rerouted: float32 CPU
tensors, no autograd (a training step keeps MKL and its backward), a non-empty input of 2 or more
dims, a contiguous 2-D weight and a contiguous bias (oneDNN misreads a broadcast, stride-0 bias).
The products are the same maths in another summation order: float32 rounding differs (about 1e-6
relative), so a run is repeatable with the same library, not bit-equal across the two.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from anima.errors import AnimaError

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


def resolve_cpu_gemm(name: str) -> str:
    """'auto' -> oneDNN on plain AVX2 CPUs (measured faster, module docstring), else MKL; 'onednn'
    falls back to MKL where this torch has no oneDNN."""
    check_cpu_gemm(name)
    if name == AUTO:
        name = ONEDNN if torch.backends.cpu.get_cpu_capability() == "AVX2" else MKL
    return ONEDNN if name == ONEDNN and onednn_available() else MKL


def _onednn_takes(x: Any, w: Any, b: Any) -> bool:
    return (
        isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor)
        and x.device.type == "cpu" and w.device.type == "cpu"
        and x.dtype == torch.float32 and w.dtype == torch.float32
        and x.dim() >= 2 and x.numel() > 0 and w.dim() == 2 and w.is_contiguous()
        and (b is None or (isinstance(b, torch.Tensor) and b.dtype == torch.float32 and b.is_contiguous()
                           and b.device.type == "cpu"))
    )  # fmt: skip


class OneDNNLinears(TorchFunctionMode):
    """While entered (in this thread), eligible ``F.linear`` calls run oneDNN's fp32 linear."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if func is F.linear and not torch.is_grad_enabled():
            x = args[0] if args else kwargs.get("input")
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if _onednn_takes(x, w, b):
                return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
        return func(*args, **kwargs)


def cpu_linears(name: str) -> AbstractContextManager:
    """The context a CPU run's forwards go in: `OneDNNLinears` where `resolve_cpu_gemm` says oneDNN."""
    return OneDNNLinears() if resolve_cpu_gemm(name) == ONEDNN else nullcontext()
