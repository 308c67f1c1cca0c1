"""8-bit weight storage for the DiT: int8 or fp8 (e4m3) weights with fp32 scales, dequantised on the fly.

For GPUs where memory, not compute, is the limit (``--weights int8|fp8``): the 1.76 B parameters of
the blocks' attention and MLP projections take 1 byte each instead of 2, the rest of the model stays in
the compute dtype. On GPUs with int8 (compute capability 7.5+) or fp8 (8.9+) tensor cores, and
for int8 on CPUs with oneDNN at AVX2 or above, the matmul runs in 8 bits with dynamically quantised
activations; elsewhere each forward dequantises the weight and runs a normal matmul, so the numbers
are those of a bf16 model whose weights were rounded to 8 bits:

- int8: symmetric, round-to-nearest, scale = amax / 127 per output channel (or per tensor).
- fp8: ``float8_e4m3fn`` (3 mantissa bits), scale = amax / 448 per output channel (or per tensor).

The module itself (`QuantLinear`) and the matmul it runs (int8 or fp8 tensor cores where the GPU has
them, else dequantise + matmul) live in `anima.model.quant_linear` and `anima.model.qmatmul`; this
module decides what to quantise. Measured against bf16 on the tiny fixture (tests/test_quant.py): int8
per-channel changes the velocity by 1.3% of its max (bf16 itself is 0.9% away from fp32), fp8 by
4.4%. Quantise after the model has its final device (``.to(float16)`` would also convert the fp8
buffers). `quantize_dit` can take a DiT still in its file's dtype (memory-mapped): it quantises
layer by layer, gives the mapped pages back, then casts the rest to `compute_dtype`, so the peak is
the 8-bit model, never a full fp32 copy (issue 19: a 2B DiT in fp32 is 8 GB). On CPUs int8 is both
a memory and a speed option (oneDNN's int8 matmul); fp8 there is dequantised per call.

GGUF Q8_0 layers (one fp16 scale per 32 weights) have no int8 kernel of their own: where the
device's int8 kernel exists, `requantize_q8_0` turns them into per-channel int8 `QuantLinear`s
(dequantise exactly, round once more to a per-row scale: the weights stay 8-bit).

The AdaLN modulations, embedders and final layer are left alone: they are 9% of the weights and the
most sensitive to rounding. Quantisation is applied after loading (`quantize_dit`) and replaces the
``nn.Linear`` modules in place under the same names, so LoRA wrappers find the same module paths
(a wrapper that needs the dense weight calls `QuantLinear.dequantize()`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from anima.errors import AnimaError
from anima.model import qmatmul
from anima.model.ggml_modules import GGMLLinear
from anima.model.quant_linear import QuantLinear, quantize_weight
from anima.weights.mapped_pages import file_mappings, release, trim_heap

FORMATS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}  # what `quantize_dit` writes
# The projections inside each block that are quantised (checkpoint names, relative to the block).
BLOCK_LINEARS = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.output_proj",
    "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.output_proj",
    "mlp.layer1", "mlp.layer2",
)  # fmt: skip
# What ``quantize_dit(cast_blocks=False)`` leaves in the file's dtype: the unquantised bulk of each
# block (3 x 6.3 M weights, 0.66 GB over the 2B DiT's 28 blocks in fp32, half that as stored in bf16).
# The attention norms are cast (a few hundred values) so the cross-attention K/V can be cached.
STORED_PER_BLOCK = ("adaln_modulation_self_attn", "adaln_modulation_cross_attn", "adaln_modulation_mlp")
__all__ = ["BLOCK_LINEARS", "FORMATS", "STORED_PER_BLOCK", "QuantLinear", "QuantReport", "cast_unquantized",
           "has_int8_kernel", "kernel_note", "loaded_note", "matmul_record", "prepack", "quantize_dit",
           "quantize_weight", "requantize_q8_0"]  # fmt: skip


def kernel_note(fmt: str, device: torch.device, forced: str | None = None) -> str:
    """Which matmul 8-bit weights of `fmt` get on `device` (`anima.model.qmatmul`), for the notes;
    `forced`: the kernel the layers were given instead."""
    kernel = forced or qmatmul.choose_kernel(fmt, device.type, qmatmul.device_capability(device))
    return qmatmul.KERNEL_NAMES[kernel]


def has_int8_kernel(device: torch.device) -> bool:
    """Whether int8 weights get a real int8 matmul on `device` (not dequantise + matmul)."""
    return qmatmul.choose_kernel("int8", device.type, qmatmul.device_capability(device)) != qmatmul.DEQUANT


def matmul_record(dit: nn.Module, device: torch.device) -> str:
    """What the recipe records about the 8-bit layers' matmul: kernel and the device's ISA or compute
    capability, e.g. "int8: int8 matmul (torch._int_mm) on AVX512"; "" when the DiT has none."""
    fmts = sorted({m.fmt for m in dit.modules() if isinstance(m, QuantLinear)})
    if not fmts:
        return ""
    cap = qmatmul.device_capability(device)
    where = f"sm_{cap[0]}{cap[1]}" if isinstance(cap, tuple) else (cap or qmatmul.cpu_isa())
    forced = {m.fmt: m.kernel for m in dit.modules() if isinstance(m, QuantLinear) and m.kernel}
    return "; ".join(f"{f}: {kernel_note(f, device, forced.get(f))} on {where}" for f in fmts)


def loaded_note(dit: nn.Module, device: torch.device) -> str | None:
    """What a quantised DiT file brought (GGUF blocks, 8-bit layers) and how its 8-bit layers multiply."""
    counts: dict[str, int] = {}
    fmts = set()
    for m in dit.modules():
        if isinstance(m, GGMLLinear):
            counts[f"GGUF {m.qtype}"] = counts.get(f"GGUF {m.qtype}", 0) + 1
        elif isinstance(m, QuantLinear):
            counts[m.fmt] = counts.get(m.fmt, 0) + 1
            fmts.add(m.fmt)
    if not counts:
        return None
    text = "weights from the file: " + ", ".join(f"{n} layers {k}" for k, n in sorted(counts.items()))
    kernels = sorted({kernel_note(f, device) for f in fmts})
    return text + (f" ({'; '.join(kernels)})" if kernels else "")


@dataclass(frozen=True)
class QuantReport:
    fmt: str
    layers: int
    bytes_before: int
    bytes_after: int

    @property
    def saved_gb(self) -> float:
        return (self.bytes_before - self.bytes_after) / 2**30


def quantize_dit(
    dit: nn.Module, fmt: str, *, per_channel: bool = True, compute_dtype: torch.dtype | None = None,
    kernel: str | None = None, cast_blocks: bool = True,
) -> QuantReport:
    """Replace the blocks' plain attention/MLP ``nn.Linear`` layers by `QuantLinear` (in place).

    `compute_dtype`: what the quantised layers and the rest of the DiT compute in (None: each
    layer's own dtype, the rest untouched); the rest is cast block by block after its layers are
    quantised (`cast_unquantized`), except, with ``cast_blocks=False``, each block's
    `STORED_PER_BLOCK` (kept as loaded and upcast per block as it runs:
    `anima.pipeline.placement.upcasts_blocks`); `kernel` is forced on every layer (`QuantLinear`).
    Layers already wrapped (a LoRA applied before quantisation) are left in the compute dtype; apply
    quantisation first, LoRAs second.
    """
    if fmt not in FORMATS:
        raise AnimaError(f"unknown weight format '{fmt}'; choose int8 or fp8")
    layers = before = after = 0
    mappings = file_mappings()
    for block in dit.blocks:
        for path in BLOCK_LINEARS:
            parent_path, _, name = path.rpartition(".")
            parent = block.get_submodule(parent_path)
            layer = getattr(parent, name)
            if type(layer) is not nn.Linear:
                continue
            q = QuantLinear.from_linear(layer, fmt, per_channel, compute_dtype=compute_dtype, kernel=kernel)
            dense = torch.empty((), dtype=compute_dtype or layer.weight.dtype).element_size()
            before += layer.weight.numel() * dense
            after += q.weight.numel() * q.weight.element_size() + q.scale.numel() * 4
            release(layer.weight, mappings)  # a memory-mapped source: its pages are not needed again
            setattr(parent, name, q)
            layers += 1
        if compute_dtype is not None:
            cast_unquantized(block, compute_dtype, mappings, skip=None if cast_blocks else _stored(block))
        trim_heap()  # the block's fp32 temporaries lie between the int8 weights that stay
    if compute_dtype is not None:
        stored = None if cast_blocks else nn.ModuleList(_stored(b) for b in dit.blocks)
        cast_unquantized(dit, compute_dtype, mappings, skip=stored)
    return QuantReport(fmt=fmt, layers=layers, bytes_before=before, bytes_after=after)


def cast_unquantized(
    module: nn.Module, dtype: torch.dtype, mappings: list | None = None, *, skip: nn.Module | None = None
) -> None:
    """Cast the floating parameters and buffers of every layer that is not quantised (nor inside
    `skip`) to `dtype`, in place, giving back memory-mapped source pages as it goes.
    (``module.to(dtype)`` would also cast the float32 scales and fp8 values of the 8-bit layers.)"""
    mappings = file_mappings() if mappings is None else mappings
    skipped = {id(m) for m in skip.modules()} if skip is not None else set()
    for m in module.modules():
        if isinstance(m, (QuantLinear, GGMLLinear)) or id(m) in skipped:
            continue
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if t is None or not t.is_floating_point() or t.dtype == dtype:
                continue
            cast = t.detach().to(dtype)
            release(t, mappings)
            if isinstance(t, nn.Parameter):
                setattr(m, name, nn.Parameter(cast, requires_grad=False))
            else:
                m._buffers[name] = cast


def _stored(block: nn.Module) -> nn.ModuleList:
    return nn.ModuleList(getattr(block, name) for name in STORED_PER_BLOCK if hasattr(block, name))


def prepack(dit: nn.Module) -> int:
    """Pack every 8-bit layer of a CPU DiT for its kernel now (`QuantLinear.prepack`), returning the
    heap block by block; -> how many were packed. Packed on first use instead, the plain int8 copies
    freed during the first step stayed in glibc's arenas: +1.2 GB of RSS at 256x256 (2B DiT).

    fbgemm packs on one thread and lets go of the GIL, so its layers are packed by as many threads
    as torch uses: on a 2-core Zen 2 the 2B DiT's 280 packs took 14.7 s on one (52 ms each), four
    8192 x 2048 packs 1.03 s serially and 0.51 s on two threads. oneDNN's packing is parallel
    already and stays serial."""
    fbgemm = any(m.kernel_to_pack() == qmatmul.FBGEMM for m in dit.modules() if isinstance(m, QuantLinear))
    n = 0
    # The quantized engine is process-wide: set once for all the threads (`qmatmul.quantized_engine`).
    with (
        ThreadPoolExecutor(max(torch.get_num_threads(), 1) if fbgemm else 1) as pool,
        qmatmul.quantized_engine(qmatmul.FBGEMM) if fbgemm else nullcontext(),
    ):
        for block in dit.blocks:
            layers = [m for m in block.modules() if isinstance(m, QuantLinear)]
            n += sum(pool.map(QuantLinear.prepack, layers))
            trim_heap()
    return n + sum(m.prepack() for m in dit.modules() if isinstance(m, QuantLinear))


def requantize_q8_0(dit: nn.Module, compute_dtype: torch.dtype) -> int:
    """GGUF Q8_0 layers -> per-channel int8 `QuantLinear` (in place), so they get the device's int8
    matmul; returns how many were converted. Bias-carrying layers stay GGML."""
    n = 0
    for name, m in list(dit.named_modules()):
        if not isinstance(m, GGMLLinear) or m.qtype != "Q8_0" or m.bias is not None:
            continue
        q, scale = quantize_weight(m.dequantize(torch.float32), "int8")
        parent_path, _, child = name.rpartition(".")
        setattr(dit.get_submodule(parent_path), child, QuantLinear(q, scale, "int8", compute_dtype))
        n += 1
        trim_heap()  # as in `quantize_dit`: the fp32 dequantisation is freed between kept weights
    return n
