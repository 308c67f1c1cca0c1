"""Where every part lives under a memory budget (``--vram-budget GB``, or automatic from free memory).

A run has two phases that never overlap: text conditioning (Qwen3 encoder + LLM adapter) and
sampling (DiT, then the VAE decode). `plan_memory` decides, from byte sizes and activation
estimates:

- whether the text encoder stays on the device or runs on the CPU and is released once the prompts
  are encoded (reloaded from its file for the next run): the latter when the whole set does not fit;
- whether the DiT's blocks stay on the device or are streamed from host memory one at a time with
  prefetch (`anima.runtime.streaming.BlockStreamer`), and how many stay resident;
- how much is left for the VAE decode, which the pipeline's tiling decision uses.

Targets at 1024x1024: 8 GB runs bf16 with no streaming, 4 GB runs with 8-bit weights and
streaming. The estimates are deliberately simple (weights + the largest live activations + a fixed
margin for the allocator and kernels' workspaces); `--profile` reports what was actually used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from anima.errors import AnimaError

GB = 2**30
MARGIN = 256 * 2**20  # allocator fragmentation, cuBLAS/cuDNN workspaces, small buffers


def module_bytes(module: nn.Module | None, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's tensors; with `dtype`, floating tensors counted as if cast to it."""
    if module is None:
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    size = torch.empty((), dtype=dtype).element_size() if dtype is not None else 0
    return sum(t.numel() * (size if dtype is not None and t.is_floating_point() else t.element_size())
               for t in tensors)  # fmt: skip


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of each part as loaded (after any quantisation)."""

    dit_other: int  # DiT without its blocks (embedders, final layer), plus the LLM adapter
    blocks: tuple[int, ...]
    text_encoder: int
    vae: int

    @classmethod
    def of(cls, pipe, dit_dtype: torch.dtype | None = None) -> ModelSizes:
        """`dit_dtype`: count the DiT's floating tensors as if cast to it (a DiT still in its file's
        dtype, for a plan in the compute dtype)."""
        blocks = tuple(module_bytes(b, dit_dtype) for b in pipe.dit.blocks)
        other = module_bytes(pipe.dit, dit_dtype) - sum(blocks) + module_bytes(pipe.adapter)
        return cls(other, blocks, module_bytes(pipe.text_encoder), module_bytes(pipe.vae))

    @property
    def dit(self) -> int:
        return self.dit_other + sum(self.blocks)


def dit_activation_bytes(cfg, tokens: int, batch: int, dtype: torch.dtype, context_len: int = 512) -> int:
    """Largest live activations of one DiT forward plus the cached cross-attention K/V.

    Per token: the fp32/compute residual stream and its modulated copy, q/k/v/attention output
    (4 x D) and the MLP hidden layer with its GELU (2 x hidden). Flash/memory-efficient attention
    keeps no L x L matrix.
    """
    e = torch.empty((), dtype=dtype).element_size()
    d = cfg.model_channels
    per_token = 2 * d * 4 + 4 * d * e + 2 * cfg.mlp_hidden * e
    kv_cache = cfg.num_blocks * 2 * context_len * d * e
    return batch * (tokens * per_token + kv_cache)


@dataclass(frozen=True)
class MemoryPlan:
    budget: int | None  # bytes; None: no limit (everything stays where it was loaded)
    release_text_encoder: bool = False  # free it (host memory) once the prompts are encoded
    stream_blocks: bool = False
    resident_blocks: int = 0  # blocks kept on the device when streaming (the first ones)
    prefetch: int = 1  # blocks copied ahead while the current one runs
    vae_budget: int | None = None  # bytes left for the VAE decode (None: ask the device)
    estimate: dict = field(default_factory=dict)  # bytes per part, for logs and --profile
    text_encoder_on_host: bool = False  # run it on the CPU: it never takes device memory
    # A RAM plan (`plan_ram`; or, with no budget, 8-bit blocks computing in fp32:
    # `placement.upcasts_blocks`): streamed blocks stay in the file's dtype, upcast per block.
    ram: bool = False

    def describe(self) -> str:
        if self.ram and self.budget is None:
            return (
                "memory: no budget; the 8-bit DiT blocks' other weights kept in the file's dtype and "
                "upcast one block at a time as they run, text encoder released after encoding"
            )
        if self.ram:
            dit = "DiT in the compute dtype"
            if self.stream_blocks:
                dit = (f"{self.resident_blocks} DiT blocks in the compute dtype, the rest kept in the "
                       "file's dtype and upcast one at a time as they run")  # fmt: skip
            return (
                f"memory: RAM budget {self.budget / GB:.1f} GB, {dit}, text encoder released after encoding"
            )
        if self.budget is None:
            te = "; the text encoder is released after encoding" if self.release_text_encoder else ""
            return f"memory: no budget; every part stays on the device{te}"
        parts = [f"budget {self.budget / GB:.1f} GB"]
        where = "runs on the CPU" if self.text_encoder_on_host else "on the device"
        after = ", released after encoding" if self.release_text_encoder else ""
        parts.append(f"text encoder {where}{after}")
        if self.stream_blocks:
            parts.append(f"DiT blocks streamed ({self.resident_blocks} resident, prefetch {self.prefetch})")
        else:
            parts.append("DiT fully resident")
        if self.vae_budget is not None:
            parts.append(f"{self.vae_budget / GB:.2f} GB for the VAE decode")
        return "memory: " + ", ".join(parts)


def plan_memory(
    budget: int | None, sizes: ModelSizes, activations: int, *, prefetch: int = 1, quantized: bool = False
) -> MemoryPlan:
    """Decide placement for `budget` bytes of device memory (see the module docstring).

    `quantized`: the DiT already has 8-bit weights (the error then does not suggest them)."""
    if budget is None:
        return MemoryPlan(budget=None)
    n = len(sizes.blocks)
    block = max(sizes.blocks) if n else 0
    estimate = {
        "text_encoder": sizes.text_encoder, "dit": sizes.dit, "dit_activations": activations,
        "vae": sizes.vae, "margin": MARGIN,
    }  # fmt: skip
    sampling_fixed = sizes.dit_other + sizes.vae + activations + MARGIN
    everything = sizes.text_encoder + sizes.dit + sizes.vae + activations + MARGIN
    # When not everything fits, the text encoder runs on the CPU (a few hundred tokens through 0.6 B
    # parameters: about a second) and is freed after encoding, so the device holds only what sampling
    # needs, and the DiT never has to leave the device for a text-encoding phase.
    host_te = everything > budget
    room = budget - sampling_fixed - (0 if host_te else sizes.text_encoder)
    blocks = sizes.dit - sizes.dit_other
    common = {"budget": budget, "release_text_encoder": host_te, "text_encoder_on_host": host_te,
              "prefetch": prefetch, "estimate": estimate}  # fmt: skip
    if room >= blocks:
        return MemoryPlan(resident_blocks=n, vae_budget=room - blocks + activations, **common)
    in_flight = (prefetch + 1) * block
    if room < in_flight:
        need = (sampling_fixed + in_flight) / GB
        tries = (
            "a smaller image or a larger budget"
            if quantized
            else "int8 weights, a smaller image, or a larger budget"
        )
        raise AnimaError(
            f"memory budget {budget / GB:.2f} GB is too small for this model and size (streaming needs "
            f"{need:.2f} GB); try {tries}",
            setting="vram_budget",
        )
    resident = min(n, (room - in_flight) // block) if block else n
    left = room - resident * block - in_flight + activations
    return MemoryPlan(stream_blocks=True, resident_blocks=int(resident), vae_budget=left, **common)


TEXT_ACTIVATIONS = 64 * 2**20  # a few hundred tokens through the 0.6 B encoder, one layer at a time


def plan_ram(
    budget: int, sizes: ModelSizes, stored_blocks: tuple[int, ...], activations: int, *, quantized: bool
) -> MemoryPlan:
    """`plan_memory`'s counterpart for a CPU (``--ram-budget GB``): the device *is* host memory.

    `sizes` are in the compute dtype, `stored_blocks` each DiT block as loaded (its file's dtype, e.g.
    bf16 for an fp32 run). The text encoder is always released after encoding, so the text phase
    (DiT + encoder) and the sampling phase (DiT + VAE + activations) are budgeted apart. When the
    compute-dtype DiT does not fit, the last blocks stay in the file's dtype and are upcast one at a
    time around their forward (`anima.runtime.streaming.BlockStreamer` with a dtype, no prefetch:
    a CPU copy cannot overlap the compute), as many as needed and no more.
    """
    n = len(sizes.blocks)
    full, stored = sizes.blocks, tuple(stored_blocks)
    estimate = {
        "text_encoder": sizes.text_encoder, "dit": sizes.dit, "dit_stored": sizes.dit_other + sum(stored),
        "dit_activations": activations, "vae": sizes.vae, "margin": MARGIN,
    }  # fmt: skip
    phase = max(sizes.text_encoder + TEXT_ACTIVATIONS, sizes.vae + activations)
    room = budget - sizes.dit_other - phase - MARGIN
    common = {"budget": budget, "release_text_encoder": True, "text_encoder_on_host": True,
              "prefetch": 0, "estimate": estimate, "ram": True}  # fmt: skip
    if room >= sum(full):
        return MemoryPlan(resident_blocks=n, vae_budget=budget - sizes.dit - MARGIN, **common)
    block, saved = max(full, default=0), max(f - s for f, s in zip(full, stored, strict=True)) if n else 0
    if saved <= 0 or room < sum(stored) + block:
        need = (sizes.dit_other + phase + MARGIN + (sum(stored) + block if saved > 0 else sum(full))) / GB
        tries = "a smaller image or a larger budget" if quantized else "int8 weights, or a larger budget"
        raise AnimaError(
            f"RAM budget {budget / GB:.2f} GB is too small for this model and size (it needs "
            f"{need:.2f} GB); try {tries}",
            setting="ram_budget",
        )
    # Blocks 0..resident-1 in the compute dtype, the rest stored + one upcast copy in flight.
    resident = next(r for r in range(n, -1, -1) if sum(full[:r]) + sum(stored[r:]) + block <= room)
    used = sizes.dit_other + sum(full[:resident]) + sum(stored[resident:]) + block
    return MemoryPlan(stream_blocks=True, resident_blocks=resident, vae_budget=budget - used - MARGIN,
                      **common)  # fmt: skip


def available_ram() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (the automatic RAM budget); None where unknown."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):  # noqa: SIM115 (a few lines, read once)
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def auto_budget(device: torch.device) -> int | None:
    """Free memory of a CUDA device (the automatic budget); None elsewhere (no planning on CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def parse_budget(value: float | str | None, setting: str = "vram_budget") -> float | str | None:
    """A memory budget as users give it: a number of GB (or its text), 'auto', or None/'none'.

    The one reader of budget values (CLI flags, server options, recorded settings)."""
    if value is None or value == "none":
        return None
    if value == "auto":
        return "auto"
    try:
        gb = float(value)
    except (TypeError, ValueError):
        raise AnimaError(
            f"memory budget takes a number of GB or 'auto', got '{value}'", setting=setting
        ) from None
    if not gb > 0 or gb != gb or gb == float("inf"):
        raise AnimaError(f"memory budget must be > 0 GB, got {value}", setting=setting)
    return gb


def budget_from_gb(value: float | str | None, device: torch.device) -> int | None:
    """A budget (see `parse_budget`) in bytes: 'auto' is the free memory on CUDA, none on a CPU."""
    value = parse_budget(value)
    if value is None:
        return None
    if value == "auto":
        return auto_budget(device)
    return int(value * GB)
