"""The text encoder's file read into the page cache while the DiT loads (`anima.weights.readahead`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import tiny_pipeline

from anima.pipeline import core
from anima.weights import readahead


def _counting_sendfile(monkeypatch) -> list[tuple[int, int, int]]:
    sent: list[tuple[int, int, int]] = []  # (file size, offset, bytes sent)
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        sent.append((os.fstat(in_fd).st_size, offset, n))
        return n

    monkeypatch.setattr(os, "sendfile", counting)
    return sent


@pytest.mark.skipif(not hasattr(os, "sendfile"), reason="no sendfile on this OS")
def test_every_byte_is_sent_through_the_page_cache(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "big.safetensors"
    f.write_bytes(os.urandom(3 * 1000 + 7))
    monkeypatch.setattr(readahead, "_CHUNK", 1000)  # several sendfile calls, a short last one
    sent = _counting_sendfile(monkeypatch)
    thread = readahead.read_ahead([f])
    assert thread is not None and thread.daemon
    thread.join(timeout=10)
    assert sent == [(3007, 0, 1000), (3007, 1000, 1000), (3007, 2000, 1000), (3007, 3000, 7)]


@pytest.mark.skipif(not hasattr(os, "sendfile"), reason="no sendfile on this OS")
def test_a_folder_is_read_as_the_loader_reads_it_and_nothing_else(tmp_path: Path, monkeypatch) -> None:
    """A diffusers component: its shards (`loading.shard_files`), not its config; a path the loader
    would refuse is left to the loader's error."""
    (tmp_path / "te").mkdir()
    for name, size in (("model-00001.safetensors", 11), ("model-00002.safetensors", 13), ("config.json", 5)):
        (tmp_path / "te" / name).write_bytes(b"x" * size)
    sent = _counting_sendfile(monkeypatch)
    thread = readahead.read_ahead([tmp_path / "te"])
    assert thread is not None
    thread.join(timeout=10)
    assert sent == [(11, 0, 11), (13, 0, 13)]
    (tmp_path / "empty").mkdir()
    assert readahead.read_ahead([tmp_path / "missing", tmp_path / "empty"]) is None


def test_loading_a_pipeline_reads_the_text_encoder_ahead(monkeypatch) -> None:
    asked: list[list[Path]] = []
    monkeypatch.setattr(core, "read_ahead", lambda paths: asked.append(list(paths)))
    tiny_pipeline()
    assert [[p.name for p in paths] for paths in asked] == [["qwen3_tiny_te.safetensors"]]
