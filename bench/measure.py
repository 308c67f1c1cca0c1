"""Timers and memory probes shared by the benchmark runners.

Peak RSS per phase: Linux keeps the high-water mark in /proc/self/status (VmHWM) and lets a process
reset it by writing "5" to /proc/self/clear_refs, so one process can report the peak of each phase.
Timing of model parts uses forward hooks on the modules both libraries run (text encoder, adapter,
DiT, VAE decoder), so neither pipeline's code is modified or re-implemented.
"""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kb(field_name: str) -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_gb() -> float:
    return _status_kb("VmRSS") / 2**20


def peak_rss_gb() -> float:
    return _status_kb("VmHWM") / 2**20


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS, so the next phase starts from a clean RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Restart the VmHWM high-water mark at the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_isa() -> dict:
    """The CPU's vector ISA as the kernels see it: ATen's dispatch level (honours
    ``ATEN_CPU_CAPABILITY``), the relevant /proc/cpuinfo flags, the model name, and which matmul
    anima's int8 weights get here (`anima.model.qmatmul`) and its fp32 linears (`anima.runtime.cpu_gemm`)."""
    from anima.model import qmatmul
    from anima.runtime.cpu_gemm import resolve_cpu_attention, resolve_cpu_gemm
    from anima.runtime.cpu_info import cpu_field, cpu_flags

    flags, model = cpu_flags(), cpu_field("model name")
    cpu = torch.device("cpu")
    kernel = qmatmul.choose_kernel("int8", "cpu", qmatmul.device_capability(cpu))
    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
    limits = {k: os.environ[k] for k in names if k in os.environ}
    return {"aten_capability": torch.backends.cpu.get_cpu_capability(), "model": model,
            "flags": [f for f in _ISA_FLAGS if f in flags], "int8_matmul": qmatmul.KERNEL_NAMES[kernel],
            "fp32_matmul": resolve_cpu_gemm("auto"),
            "attention": "onednn" if resolve_cpu_attention("auto") else "torch sdpa",
            "isa_limits": limits}  # fmt: skip


def machine_load() -> dict:
    """Load average and a 0.3 s bf16 matmul rate: how busy the shared CPU was around a measurement."""
    a = torch.randn(512, 2048, dtype=torch.bfloat16)
    w = torch.randn(2048, 2048, dtype=torch.bfloat16)
    torch.nn.functional.linear(a, w)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        torch.nn.functional.linear(a, w)
        n += 1
    rate = n * 2 * 512 * 2048 * 2048 / (time.perf_counter() - t0) / 1e9
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "bf16_matmul_gflops": round(rate, 1)}


@dataclass
class PartTimer:
    """Wall time spent inside the forward of a set of modules, with the first-entry / last-exit times."""

    calls: list[float] = field(default_factory=list)
    first_start: float | None = None
    last_end: float | None = None
    _t0: float = 0.0
    _depth: int = 0

    def pre(self, *_args, **_kw) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
            if self.first_start is None:
                self.first_start = self._t0
        self._depth += 1

    def post(self, *_args, **_kw) -> None:
        self._depth -= 1
        if self._depth == 0:
            now = time.perf_counter()
            self.calls.append(now - self._t0)
            self.last_end = now

    @property
    def total(self) -> float:
        return sum(self.calls)


@contextmanager
def timed_modules(**parts: list[torch.nn.Module]) -> Iterator[dict[str, PartTimer]]:
    """Attach a PartTimer to the forward of each module list; hooks are removed on exit."""
    timers = {name: PartTimer() for name in parts}
    handles = []
    for name, modules in parts.items():
        for m in modules:
            handles.append(m.register_forward_pre_hook(timers[name].pre, with_kwargs=True))
            handles.append(m.register_forward_hook(timers[name].post, with_kwargs=True))
    # Hold no reference to the modules while the run goes on: a pipeline that frees a part mid-run
    # (anima releases its text encoder before sampling) must really free it.
    parts.clear()
    modules = m = None  # noqa: F841 (drop the loop variables' last references too)
    try:
        yield timers
    finally:
        for h in handles:
            h.remove()


@contextmanager
def stopwatch() -> Iterator[dict]:
    out: dict = {}
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0
