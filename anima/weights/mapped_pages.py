"""Resident pages: give back those of memory-mapped weights once copied elsewhere, and those of the
heap after loading; keep the heap's while a model runs (`reused_heap`).

`anima.weights.safetensors.load_mmap` maps a file privately; every tensor is a view into that mapping. A
view that is converted (bf16 -> fp32, or moved to a GPU) is read once and never again, yet its
pages stay in this process's resident set until the whole file is unmapped, which happens only
after every tensor of the file has been converted. Loading the 4 GB bf16 DiT as fp32 therefore
peaked at 8 GB of copies plus 4 GB of mapping. Telling the kernel, tensor by tensor, that the
source pages are no longer needed (``madvise(MADV_DONTNEED)``) keeps the peak near the copies.

Why this is safe: it is only done for ranges inside a *file-backed* mapping (checked against
``/proc/self/maps``). Clean pages of such a mapping are dropped from this process only; they stay in
the page cache, and touching the tensor again reads the same bytes back from the file. (Weights
are never written in place, so there are no private copies to lose.) Anonymous memory, which
MADV_DONTNEED would zero, is never touched. On systems without ``/proc`` or ``madvise`` this is a
no-op.

The same goes for the heap (`trim_heap`): converting weights layer by layer (8-bit quantisation)
frees a few GB of temporaries between long-lived results, and glibc keeps the freed chunks in its
arenas instead of returning them; how much stays depends on thread timing. Measured on the 2B DiT
quantised to int8 in fresh processes: peak RSS 2.9-6.2 GB without trimming (RssAnon up to 7.4 GB
once the text encoder and VAE joined), 2.83 GB every time with ``malloc_trim`` after each block.

While a model *runs* the opposite holds (`reused_heap`): each op's output is a fresh tensor of the same
few sizes, and glibc hands tensors of a few MB to ``mmap`` and gives them back on free, so every
output is faulted in page by page and zeroed anew. In the VMs this project runs on a page fault
costs about 1 us: a fresh 16 MB result took 3.2-3.9 ms against 0.8 ms for the same pass into kept
memory, and a 512x512 bf16 DiT forward took 7.1-7.6 s against 5.6-5.9 s with the freed memory kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache

import torch
from torch import nn

_MADV_DONTNEED = 4  # the same on every Linux architecture


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def file_mappings() -> list[tuple[int, int]]:
    """(start, end) address ranges of this process's file-backed mappings (empty if unknown)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        # start-end perms offset dev inode [path]; a file mapping has an inode and a real path.
        if len(parts) == 6 and parts[4] != "0" and parts[5].startswith("/"):
            lo, hi = parts[0].split("-")
            out.append((int(lo, 16), int(hi, 16)))
    return out


def trim_heap() -> None:
    """Return the heap's free pages to the system (glibc ``malloc_trim``; a no-op elsewhere).

    Call it after freeing many large temporaries that lay between allocations that stay (it costs
    about 10 ms per GB of free heap); torch's CPU allocator takes its memory from this heap."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)


# mallopt parameters (malloc.h) and the values used while a model runs: allocations under 64 MB come
# from the heap (a 1024x1024 step's activations, [2, 4096, 2048] fp32, are 64 MB) and up to 1 GB of
# freed heap is kept for reuse instead of being returned after every op.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RUN_MMAP_THRESHOLD, RUN_TRIM_THRESHOLD = 64 << 20, 1 << 30
# After the run: glibc cannot go back to its adaptive thresholds once they are set, so they are set to
# where the adaptation settles once large tensors have been freed (its 32 MB maximum, trim at twice it).
IDLE_MMAP_THRESHOLD, IDLE_TRIM_THRESHOLD = 32 << 20, 64 << 20
_heap_lock = threading.Lock()
_heap_users = 0


def _mallopt(param: int, value: int) -> None:
    libc = _libc()
    fn = getattr(libc, "mallopt", None) if libc is not None else None
    if fn is not None:
        fn(param, value)


@contextmanager
def reused_heap() -> Iterator[None]:
    """While open (in any thread), freed tensors under 64 MB stay in the heap for the next allocation;
    on the last exit the kept memory goes back to the system (`trim_heap`). See the module docstring.
    A no-op without glibc's ``mallopt``."""
    global _heap_users
    with _heap_lock:
        _heap_users += 1
        if _heap_users == 1:
            _mallopt(_M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD)
            _mallopt(_M_TRIM_THRESHOLD, RUN_TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_users -= 1
            if _heap_users == 0:
                _mallopt(_M_MMAP_THRESHOLD, IDLE_MMAP_THRESHOLD)
                _mallopt(_M_TRIM_THRESHOLD, IDLE_TRIM_THRESHOLD)
                trim_heap()


def release(t: torch.Tensor, mappings: list[tuple[int, int]]) -> int:
    """Drop the resident pages that lie wholly inside CPU tensor `t`, if `t` lies inside one of the
    file-backed `mappings` (see `file_mappings`); returns the bytes released (0 when not applicable)."""
    libc = _libc()
    if libc is None or t.device.type != "cpu" or t.numel() == 0:
        return 0
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    if not any(lo <= start and end <= hi for lo, hi in mappings):
        return 0
    page = mmap.PAGESIZE
    lo, hi = -(-start // page) * page, end // page * page  # whole pages only
    if hi <= lo:
        return 0
    if libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED) != 0:
        return 0
    return hi - lo


@contextmanager
def released_after_use(layers: Iterable[nn.Module]) -> Iterator[None]:
    """While open, each of `layers` gives back its memory-mapped weight pages once its forward ends.

    For a model run once and then freed (the CPU text encoder: one packed pass over the prompts,
    then released) this holds one layer's pages at a time instead of the whole file (1.2 GB for
    Qwen3-0.6B in bf16): the pages stay in the page cache, so a second pass only faults them back."""
    mappings = file_mappings()

    def give_back(module: nn.Module, _args, _out) -> None:
        for t in module.parameters():
            release(t, mappings)

    hooks = [layer.register_forward_hook(give_back) for layer in layers]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
