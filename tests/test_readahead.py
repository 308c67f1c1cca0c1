"""The text encoder's file read into the page cache while the DiT loads (`anima.weights.readahead`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import tiny_pipeline

from anima.pipeline import core
from anima.weights import readahead


def test_weight_files_of_a_file_a_folder_and_nothing(tmp_path: Path) -> None:
    (tmp_path / "te").mkdir()
    for name in ("model-00001.safetensors", "model-00002.safetensors", "config.json"):
        (tmp_path / "te" / name).write_bytes(b"x")
    one = tmp_path / "qwen.safetensors"
    one.write_bytes(b"x")
    assert readahead.weight_files(one) == [one]
    assert [p.name for p in readahead.weight_files(tmp_path / "te")] == [
        "model-00001.safetensors", "model-00002.safetensors"
    ]  # fmt: skip
    assert readahead.weight_files(tmp_path / "missing") == []
    assert readahead.read_ahead([tmp_path / "missing"]) is None


@pytest.mark.skipif(not hasattr(os, "sendfile"), reason="no sendfile on this OS")
def test_every_byte_is_sent_through_the_page_cache(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "big.safetensors"
    f.write_bytes(os.urandom(3 * 1000 + 7))
    monkeypatch.setattr(readahead, "_CHUNK", 1000)  # several sendfile calls, a short last one
    sent: list[tuple[int, int]] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        sent.append((offset, n))
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    thread = readahead.read_ahead([f])
    assert thread is not None and thread.daemon
    thread.join(timeout=10)
    assert sent == [(0, 1000), (1000, 1000), (2000, 1000), (3000, 7)]


def test_loading_a_pipeline_reads_the_text_encoder_ahead(monkeypatch) -> None:
    asked: list[list[Path]] = []
    monkeypatch.setattr(core, "read_ahead", lambda paths: asked.append(list(paths)))
    tiny_pipeline()
    assert [[p.name for p in paths] for paths in asked] == [["qwen3_tiny_te.safetensors"]]
