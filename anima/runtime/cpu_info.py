"""What the kernel says about this CPU (/proc/cpuinfo): its vendor, model name and feature flags.

One reader for the choices that depend on them (bf16 as the CPU default in `precision`, MKL or
oneDNN in `cpu_gemm`) and for the benchmark's machine record. Read once per process: the fields
describe the hardware, which does not change while it runs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def cpu_field(name: str) -> str:
    """The first processor's value of `name` ('vendor_id', 'model name', 'flags'); '' where there
    is no /proc/cpuinfo (another OS) or no such field (an ARM board has no 'vendor_id')."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags ('avx2', 'avx512_bf16', 'amx_int8', ...); empty where unknown."""
    return frozenset(cpu_field("flags").split())
