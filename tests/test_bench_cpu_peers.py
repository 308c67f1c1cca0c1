"""bench.cpu_peers and bench.sdcpp (issue 19): the peer is skipped cleanly without an sd-cli, its
log is read back into per-part times, modes parse, the ISA is reported. Nothing is timed here."""

from __future__ import annotations

import os
import stat

import torch

from bench import sdcpp
from bench.cpu_peers import parse_mode, psnr
from bench.measure import cpu_isa

LOG = """[INFO ] model.cpp:993  - loading tensors completed, taking 7.84s (process: 0.00s)
[INFO ] stable-diffusion.cpp:3168 - get_learned_condition completed, taking 6.20s
  |=========================>                        | 1/2 - 40.00s/it
  |==================================================| 2/2 - 42.00s/it
[INFO ] stable-diffusion.cpp:3432 - sampling completed, taking 84.10s
[INFO ] stable-diffusion.cpp:3212 - decode_first_stage completed, taking 45.34s
"""


def test_sd_cli_is_optional(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(sdcpp.ENV, raising=False)
    path, why = sdcpp.find_sd_cli(None)
    assert path is None and sdcpp.ENV in why
    path, why = sdcpp.find_sd_cli(str(tmp_path / "missing"))
    assert path is None and "not an executable" in why
    exe = tmp_path / "sd-cli"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv(sdcpp.ENV, str(exe))
    assert sdcpp.find_sd_cli(None) == (exe, "") and os.access(exe, os.X_OK)


def test_sdcpp_log_gives_load_text_steps_and_decode() -> None:
    got = sdcpp.parse_log(LOG, steps=2)
    assert got["load_s"] == 7.84 and got["text_encode_s"] == 6.2 and got["vae_decode_s"] == 45.34
    assert got["step_s"] == [40.0, 44.0]  # running averages -> each step
    assert got["per_step_s"] == 40.0 and got["sampling_s"] == 84.1


def test_modes_and_psnr() -> None:
    assert parse_mode("fp32") == ("fp32", None, None)
    assert parse_mode("int8") == ("auto", "int8", None)
    assert parse_mode("fp32+int8@3.5") == ("fp32", "int8", 3.5)
    a = torch.rand(1, 8, 8, 3)
    assert psnr(a, a) == float("inf") and 20 < psnr(a, (a + 0.02).clamp(0, 1)) < 40


def test_isa_is_reported() -> None:
    isa = cpu_isa()
    assert isa["aten_capability"] == torch.backends.cpu.get_cpu_capability()
    assert "int8_matmul" in isa and isinstance(isa["flags"], list)
