"""Ask the kernel to read weight files into the page cache before their first use, in the background.

Why: anima memory-maps its weights and reads them lazily, so a file that is not in the page cache is
read from disk by the first pass that touches it. For the text encoder that pass is the first thing
a run does after loading, and its time lands in the text encoding: on a 2-core Zen 2 VM
(2026-12-07, `bench/README.md`) the default prompt pair took 1.49 s with the encoder's file cold
against 0.61-0.64 s warm. `Pipeline.load` asks for the encoder's file first, so the disk reads
overlap the seconds the DiT takes to load and convert.

How: the file is sent to /dev/null (``sendfile``): the kernel reads every page into the page cache
without copying it into this process (0.68 s wall and 0.02 s of CPU for the encoder's 1.1 GB there;
a read into a buffer took 0.45 s of CPU). ``posix_fadvise(WILLNEED)`` is not enough: that VM's
disk capped it at 8 MB of readahead. A busy page cache may drop the pages again; it is a hint, and
where ``sendfile`` does not exist (not Linux) nothing happens.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

from anima.errors import AnimaError
from anima.weights.loading import shard_files

_CHUNK = 64 << 20


def _send_to_null(files: list[Path]) -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for f in files:
            try:
                fd = os.open(f, os.O_RDONLY)
            except OSError:
                continue
            try:
                offset, size = 0, os.fstat(fd).st_size
                while offset < size:
                    sent = os.sendfile(null, fd, offset, min(_CHUNK, size - offset))
                    if sent <= 0:
                        break
                    offset += sent
            except OSError:
                pass  # a file system without sendfile: the first pass reads the file itself
            finally:
                os.close(fd)
    finally:
        os.close(null)


def read_ahead(paths: Iterable[Path | str]) -> threading.Thread | None:
    """Start reading `paths` (files, or folders as the loader reads them: `shard_files`) into the page
    cache in a daemon thread; the thread, or None where the OS has no ``sendfile`` or there is nothing
    to read (a path the loader will refuse is left to the loader's own error)."""
    if not hasattr(os, "sendfile"):
        return None
    files: list[Path] = []
    for p in paths:
        try:
            files += shard_files(Path(p))
        except AnimaError:
            continue
    if not files:
        return None
    thread = threading.Thread(target=_send_to_null, args=(files,), name="anima-readahead", daemon=True)
    thread.start()
    return thread
