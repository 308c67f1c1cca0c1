"""``--profile``: time and peak memory of each part of a run (text encoding, DiT, VAE).

Forward hooks on the parts' modules delimit them, so no pipeline code changes. Peak memory is the
device's allocator peak on CUDA (`torch.cuda.max_memory_allocated`, reset at each part's start)
and the process's peak RSS on a CPU (VmHWM, which Linux lets a process reset through
/proc/self/clear_refs). A part's peak is its largest over all its calls.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

GB = 2**30


def _rss_peak() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _reset_rss_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


@dataclass
class PartStats:
    seconds: float = 0.0
    calls: int = 0
    peak_bytes: int = 0


@dataclass
class MemoryProfile:
    device: torch.device
    parts: dict[str, PartStats] = field(default_factory=dict)
    _t0: float = 0.0
    _depth: int = 0

    def _start(self, _name: str) -> None:
        if self._depth == 0:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)
            else:
                _reset_rss_peak()
            self._t0 = time.perf_counter()
        self._depth += 1

    def _end(self, name: str) -> None:
        self._depth -= 1
        if self._depth:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_peak()
        stats = self.parts.setdefault(name, PartStats())
        stats.seconds += time.perf_counter() - self._t0
        stats.calls += 1
        stats.peak_bytes = max(stats.peak_bytes, peak)

    def report(self) -> str:
        what = "peak VRAM (allocated)" if self.device.type == "cuda" else "peak RSS (process)"
        lines = [f"{'part':<6} {'calls':>5} {'seconds':>9} {what:>22}"]
        for name, s in self.parts.items():
            lines.append(f"{name:<6} {s.calls:>5} {s.seconds:>9.2f} {s.peak_bytes / GB:>19.2f} GB")
        return "\n".join(lines)


def _parts(pipe) -> dict[str, list[torch.nn.Module]]:
    vae = [
        m for m in (getattr(pipe.vae, "encoder", None), getattr(pipe.vae, "decoder", None)) if m is not None
    ]
    text = [m for m in (pipe.text_encoder, pipe.adapter) if m is not None]
    return {"text": text, "dit": [pipe.dit], "vae": vae}


@contextmanager
def profiled(pipe):
    """``with profiled(pipe) as prof: pipe.generate(...)``; then ``print(prof.report())``."""
    prof = MemoryProfile(torch.device(pipe.device))
    handles = []
    for name, modules in _parts(pipe).items():
        for m in modules:
            handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: prof._start(n)))
            handles.append(m.register_forward_hook(lambda _m, _a, _o, n=name: prof._end(n)))
    try:
        yield prof
    finally:
        for h in handles:
            h.remove()


@contextmanager
def maybe_profiled(pipe, enabled: bool):
    """`profiled` when enabled, else a no-op yielding None."""
    if not enabled:
        yield None
        return
    with profiled(pipe) as prof:
        yield prof
