"""GGML block formats (the tensors inside GGUF files), dequantised with torch ops on any device.

A GGML tensor is stored row by row, each row cut into blocks of `block_size` values packed into
`type_size` bytes: a float16 scale (and, for the `_1` and K types, a float16 minimum) plus the
quantised integers, some with their high bits in a separate bit plane. The layouts are those of
ggml's ``ggml-common.h`` as the `gguf` package's reference dequantiser reads them
(``gguf/quants.py``); ComfyUI-GGUF (``dequant.py``) and stable-diffusion.cpp read the same bytes.

Every function computes in float32 with the same operations in the same order as the `gguf`
package (a float16 scale times a small integer is exact in float32, and each later product or sum
is rounded once, as numpy does), so the results equal ``gguf.quants.dequantize`` bit for bit
(tests/test_ggml_dequant.py). The caller casts the float32 block values to its compute dtype.
Everything here is plain tensor indexing and integer shifts, so it runs wherever the raw bytes are
(CPU or CUDA) and the dense weight exists only for the duration of one matmul.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from anima.model.ggml_types import BLOCKS, PLAIN, QK_K  # noqa: F401 (re-exported)

_CHUNK_CPU, _CHUNK_GPU = 1 << 20, 1 << 28  # values dequantised per pass


def row_bytes(qtype: str, n: int) -> int:
    """Bytes of one row of `n` values; ValueError when `n` is not a whole number of blocks."""
    block, size = BLOCKS[qtype]
    if n % block:
        raise ValueError(f"a {qtype} row of {n} values is not a whole number of {block}-value blocks")
    return n // block * size


def _f16(blocks: torch.Tensor, at: int) -> torch.Tensor:
    """The float16 at byte `at` of each block -> [n, 1] float32.

    Every block size is even and every float16 field sits at an even offset, so the block bytes
    reinterpret as float16 without a copy."""
    return blocks.view(torch.float16)[:, at // 2 : at // 2 + 1].float()


def _nibbles(qs: torch.Tensor, width: int) -> torch.Tensor:
    """[n, k*width] bytes -> [n, k, 2, width]: the low nibbles of each `width` bytes, then the high."""
    shifts = torch.tensor([0, 4], dtype=torch.uint8, device=qs.device).reshape(1, 1, 2, 1)
    return (qs.reshape(qs.shape[0], -1, 1, width) >> shifts) & 0x0F


def _bits(b: torch.Tensor, count: int, width: int, step: int = 1) -> torch.Tensor:
    """[n, k*width] bytes -> [n, k, count, width]: bit fields (b >> j*step) for j < count."""
    shifts = (torch.arange(count, device=b.device, dtype=torch.uint8) * step).reshape(1, 1, count, 1)
    return b.reshape(b.shape[0], -1, 1, width) >> shifts


def _u32_bits(b: torch.Tensor) -> torch.Tensor:
    """[n, 4] bytes of a little-endian uint32 -> [n, 32] of its bits (bit i at column i)."""
    word = b.to(torch.int64)
    word = word[:, 0] | word[:, 1] << 8 | word[:, 2] << 16 | word[:, 3] << 24
    return (word[:, None] >> torch.arange(32, device=b.device)) & 1


def _bf16(blocks: torch.Tensor) -> torch.Tensor:
    return (blocks.contiguous().view(torch.int16).to(torch.int32) << 16).view(torch.float32)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    x = blocks.view(torch.int8)[:, 2:].float()
    return x * _f16(blocks, 0)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 2:], 16).reshape(blocks.shape[0], -1).to(torch.int16) - 8
    return _f16(blocks, 0) * q.float()


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    q = _nibbles(blocks[:, 4:], 16).reshape(blocks.shape[0], -1).float()
    return _f16(blocks, 0) * q + _f16(blocks, 2)


def _q5(blocks: torch.Tensor, qh_at: int) -> torch.Tensor:
    """The 5-bit integers of Q5_0/Q5_1 (low nibbles plus one high bit from a uint32 plane)."""
    high = _u32_bits(blocks[:, qh_at : qh_at + 4])
    low = _nibbles(blocks[:, qh_at + 4 :], 16).reshape(blocks.shape[0], -1).to(torch.int64)
    return low | (high << 4)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * (_q5(blocks, 2) - 16).float()


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    return _f16(blocks, 0) * _q5(blocks, 4).float() + _f16(blocks, 2)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8 six-bit (scale, min) pairs packed into 12 bytes (Q4_K, Q5_K) -> two [n, 8] float32."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs = blocks[:, :16], blocks[:, 16:80]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (scales & 0xF).float()).reshape(n, 16, 1)
    ml = (dmin * (scales >> 4).float()).reshape(n, 16, 1)
    q = (_bits(qs, 4, 32, step=2) & 3).reshape(n, 16, 16).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, scales = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
    d = _f16(blocks, 108)
    low = _bits(scales[:, :8], 2, 8, step=4).reshape(n, 16)
    high = _bits(scales[:, 8:], 4, 4, step=2).reshape(n, 16)
    sc = (((low & 0x0F) | ((high & 0x03) << 4)).to(torch.int16) - 32).float()
    dl = (d * sc).reshape(n, 16, 1)
    ql = (_bits(qs, 4, 32, step=2) & 3).reshape(n, 16, 16).to(torch.int16)
    # A set bit in the high-bit mask means "no offset"; a clear one subtracts 4.
    qh = ((_bits(hmask, 8, 32) & 1) ^ 1).reshape(n, 16, 16).to(torch.int16)
    return (dl * (ql - (qh << 2)).float()).reshape(n, QK_K)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc).reshape(n, -1, 1)
    ml = (dmin * mn).reshape(n, -1, 1)
    q = _nibbles(blocks[:, 16:], 32).reshape(n, -1, 32).float()
    return (dl * q - ml).reshape(n, QK_K)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc).reshape(n, -1, 1)
    ml = (dmin * mn).reshape(n, -1, 1)
    low = _nibbles(blocks[:, 48:], 32).reshape(n, -1, 32)
    high = (_bits(blocks[:, 16:48], 8, 32) & 1).reshape(n, -1, 32)
    return (dl * (low | (high << 4)).float() - ml).reshape(n, QK_K)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh, scales = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
    d = _f16(blocks, 208)
    dl = (d * scales.view(torch.int8).float()).reshape(n, 16, 1)
    low = _nibbles(ql, 64).reshape(n, -1, 32).to(torch.int16)
    high = (_bits(qh, 4, 32, step=2) & 3).reshape(n, -1, 32).to(torch.int16)
    q = ((low | (high << 4)) - 32).reshape(n, 16, -1).float()
    return (dl * q).reshape(n, QK_K)


_DEQUANT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "BF16": _bf16, "Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
}  # fmt: skip


def dequantize(raw: torch.Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Raw GGML bytes (uint8, any shape holding whole blocks) -> a `dtype` tensor of `shape`.

    `shape` is in torch order ([out, in] for a weight): GGUF lists dimensions innermost first, the
    reader has already reversed them.
    """
    if qtype == "F32":
        return raw.contiguous().view(torch.float32).reshape(shape).to(dtype)
    if qtype == "F16":
        return raw.contiguous().view(torch.float16).reshape(shape).to(dtype)
    block, size = BLOCKS[qtype]
    blocks = raw.reshape(-1, size).contiguous()
    out = torch.empty(blocks.shape[0], block, dtype=dtype, device=raw.device)
    # Chunks bound the float32 temporaries (a few per value) to a few MB on a CPU, so the transient
    # memory of a layer is its dense weight in `dtype`; on a GPU one pass is cheaper than many launches.
    step = max(1, (_CHUNK_GPU if raw.is_cuda else _CHUNK_CPU) // block)
    for i in range(0, blocks.shape[0], step):
        out[i : i + step] = _DEQUANT[qtype](blocks[i : i + step])  # one rounding to `dtype`
    return out.reshape(shape)
