"""Resident pages of a memory-mapped file are given back after a copy, without changing values."""

from __future__ import annotations

import sys

import pytest
import torch

from anima.weights.mapped_pages import file_mappings, release
from anima.weights.safetensors import load_mmap, save

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc are Linux")


def _rss_bytes() -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_release_gives_back_mapped_pages_and_keeps_values(tmp_path) -> None:
    ref = torch.randn(32 * 1024 * 1024, generator=torch.Generator().manual_seed(0)).bfloat16()  # 64 MB
    path = tmp_path / "w.safetensors"
    save({"w": ref}, path)
    w = load_mmap(path)["w"]
    assert torch.equal(w, ref)  # touches every page of the mapping
    before = _rss_bytes()
    released = release(w, file_mappings())
    after = _rss_bytes()
    assert released > 60 * 1024 * 1024
    assert before - after > 48 * 1024 * 1024, (before, after)
    assert torch.equal(w, ref)  # faulted back in from the file: same bytes


def test_anonymous_memory_is_never_released() -> None:
    a = torch.arange(4 * 1024 * 1024, dtype=torch.float32)
    assert release(a, file_mappings()) == 0
    assert torch.equal(a, torch.arange(4 * 1024 * 1024, dtype=torch.float32))
