"""/proc/cpuinfo fields (`anima.runtime.cpu_info`): the first processor's values, '' where absent."""

from __future__ import annotations

from pathlib import Path

from anima.runtime import cpu_info

SAMPLE = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu avx2 avx512f avx512_bf16
"""


def test_fields_and_flags_of_the_first_processor(monkeypatch, tmp_path) -> None:
    (tmp_path / "cpuinfo").write_text(SAMPLE)
    monkeypatch.setattr(cpu_info, "Path", lambda _: tmp_path / "cpuinfo")
    cpu_info.cpu_field.cache_clear()
    try:
        assert cpu_info.cpu_field("vendor_id") == "AuthenticAMD"
        assert cpu_info.cpu_field("model name") == "AMD EPYC"
        assert cpu_info.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_bf16"}
        assert cpu_info.cpu_field("Hardware") == ""  # no such field
        monkeypatch.setattr(cpu_info, "Path", lambda _: tmp_path / "missing")
        cpu_info.cpu_field.cache_clear()
        assert cpu_info.cpu_field("vendor_id") == "" and cpu_info.cpu_flags() == frozenset()
    finally:
        monkeypatch.setattr(cpu_info, "Path", Path)
        cpu_info.cpu_field.cache_clear()
