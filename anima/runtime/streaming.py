"""Stream DiT blocks from host memory to the device, one at a time, with prefetch.

When the blocks do not all fit (`anima.runtime.memory.plan_memory`), the first `resident` blocks live on the
device and the others in host memory (pinned, on CUDA). A forward pre-hook on each streamed block
swaps its parameters to device copies just before it runs and starts copying the next block(s) on a
side CUDA stream; a forward hook swaps the host tensors back, so at most ``prefetch + 1`` streamed
blocks occupy the device at any time. The module tree, names and state dict do not change.

Correctness on CUDA: copies are issued on a side stream from pinned memory; the compute stream waits
on the copy's event before the block runs, and each device copy is marked with ``record_stream`` so
the caching allocator does not reuse it while the compute stream may still read it. On a CPU the
"device" copies are plain copies (``copy=True``), which is how the tests exercise the mechanism; with
a `dtype` (a CPU under ``--ram-budget``, or 8-bit blocks computing in fp32) they are the upcast
copies of blocks kept in bf16, and tensors already in that dtype are used where they lie.

Parameters added to a block after `attach` (e.g. a LoRA wrapper's) are streamed too: each load moves
whatever the block holds at that moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from anima.weights.mapped_pages import file_mappings, release


@dataclass
class StreamStats:
    loads: int = 0
    prefetched: int = 0
    bytes_copied: int = 0
    peak_streamed_bytes: int = 0  # most bytes of streamed blocks on the device at once
    _current: int = 0

    def add(self, n: int) -> None:
        self._current += n
        self.peak_streamed_bytes = max(self.peak_streamed_bytes, self._current)


@dataclass
class _Loaded:
    swaps: list  # (tensor holder, host data) to restore
    copies: list  # device tensors, in swap order
    event: object = None  # torch.cuda.Event when copied on the side stream
    bytes: int = 0


class BlockStreamer:
    """Keep ``blocks[resident:]`` on the host and stream them to `device` around their forward."""

    def __init__(
        self,
        blocks: nn.ModuleList,
        device: torch.device | str,
        *,
        resident: int = 0,
        prefetch: int = 1,
        dtype: torch.dtype | None = None,
    ):
        """`dtype`: the copies' floating dtype (None: unchanged). On a CPU under a RAM budget the
        streamed blocks stay in their file's dtype (bf16) and are upcast for their forward only."""
        self.blocks = blocks
        self.dtype = dtype
        self.device = torch.device(device)
        self.resident = max(0, min(resident, len(blocks)))
        self.prefetch = max(0, prefetch)
        self.stats = StreamStats()
        self._loaded: dict[int, _Loaded] = {}
        self._scratch: dict[int, torch.Tensor] = {}  # reused upcast buffers, by tensor slot (`_upcast`)
        self._mappings: list[tuple[int, int]] = []  # file-backed ranges (`_upcast` gives their pages back)
        self._handles: list = []
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()

    @property
    def streamed(self) -> range:
        return range(self.resident, len(self.blocks))

    # -- placement ----------------------------------------------------------------------------------

    def attach(self) -> BlockStreamer:
        """Move resident blocks to the device and streamed blocks to (pinned) host memory; add hooks."""
        if self.dtype is not None and self.device.type == "cpu":
            self._mappings = file_mappings()
        for j, block in enumerate(self.blocks):
            if j < self.resident:
                block.to(self.device)
                continue
            block.to("cpu")
            if self._pin:
                for t in _tensors(block):
                    t.data = t.data.pin_memory()
            self._handles.append(block.register_forward_pre_hook(self._make_pre(j)))
            self._handles.append(block.register_forward_hook(self._make_post(j)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for j in list(self._loaded):
            self._evict(j)
        self._scratch.clear()

    def __enter__(self) -> BlockStreamer:
        return self.attach() if not self._handles else self

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- hooks --------------------------------------------------------------------------------------

    def _make_pre(self, j: int):
        def pre(_module, _args):
            self._activate(j)
            for ahead in range(1, self.prefetch + 1):
                nxt = self._next_streamed(j, ahead)
                if nxt is not None and nxt not in self._loaded:
                    self._load(nxt, prefetch=True)

        return pre

    def _make_post(self, j: int):
        def post(_module, _args, _output):
            self._evict(j)

        return post

    def _next_streamed(self, j: int, ahead: int) -> int | None:
        """The streamed block `ahead` places after j in execution order (wrapping to the next step)."""
        streamed = list(self.streamed)
        if len(streamed) <= 1:
            return None
        k = (streamed.index(j) + ahead) % len(streamed)
        return None if streamed[k] == j else streamed[k]

    # -- moving data --------------------------------------------------------------------------------

    def _load(self, j: int, *, prefetch: bool) -> None:
        holders = _tensors(self.blocks[j])
        loaded = _Loaded(swaps=[(t, t.data) for t in holders], copies=[])
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                loaded.copies = [t.data.to(self.device, non_blocking=True) for t in holders]
                loaded.event = torch.cuda.Event()
                loaded.event.record(self._stream)
        else:
            loaded.copies = [self._copy(host, slot) for slot, (_t, host) in enumerate(loaded.swaps)]
        loaded.bytes = sum(
            c.numel() * c.element_size() for (_h, host), c in zip(loaded.swaps, loaded.copies, strict=True)
            if c is not host
        )  # fmt: skip
        self._loaded[j] = loaded
        self.stats.loads += 1
        self.stats.prefetched += int(prefetch)
        self.stats.bytes_copied += loaded.bytes
        self.stats.add(loaded.bytes)

    def _copy(self, t: torch.Tensor, slot: int) -> torch.Tensor:
        if self.dtype is None:
            return t.to(self.device, copy=True)
        if t.device != self.device or (t.is_floating_point() and t.dtype != self.dtype):
            return self._upcast(t, slot)
        return t  # an upcasting CPU streamer: 8-bit weights and norms already in the dtype stay put

    def _upcast(self, t: torch.Tensor, slot: int) -> torch.Tensor:
        """The upcast copy, written into the same buffer for every block when only one block is
        loaded at a time on a CPU and nothing records gradients: the blocks share their shapes, and a
        fresh 25 MB tensor per block and step cost page faults (glibc maps such sizes anew)."""
        dtype = self.dtype if t.is_floating_point() else t.dtype
        if self.prefetch or self.device.type != "cpu" or torch.is_grad_enabled():
            out = t.to(self.device, dtype=dtype)
        else:
            out = self._scratch.get(slot)
            if (out is None or out.shape != t.shape or out.dtype != dtype
                    or out.is_inference() != torch.is_inference_mode_enabled()):  # fmt: skip
                out = self._scratch[slot] = torch.empty(t.shape, dtype=dtype, device=self.device)
            out.copy_(t)
        if self._mappings:
            # A block kept as loaded is still a view of its memory-mapped file: its pages leave this
            # process once copied (they stay in the page cache and come back on the next step's
            # read). The 2B DiT's stored modulations: 0.33 GB less resident in every phase.
            release(t, self._mappings)
        return out

    def _activate(self, j: int) -> None:
        if j not in self._loaded:
            self._load(j, prefetch=False)
        loaded = self._loaded[j]
        if loaded.event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(loaded.event)
            for c in loaded.copies:
                c.record_stream(current)
        for (holder, _host), copy in zip(loaded.swaps, loaded.copies, strict=True):
            holder.data = copy

    def _evict(self, j: int) -> None:
        loaded = self._loaded.pop(j, None)
        if loaded is None:
            return
        for holder, host in loaded.swaps:
            holder.data = host
        self.stats.add(-loaded.bytes)


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of a module (each once)."""
    seen: dict[int, torch.Tensor] = {}
    for t in list(module.parameters()) + list(module.buffers()):
        seen.setdefault(id(t), t)
    return list(seen.values())
