"""GGML block dequantisation (anima.model.ggml) against the `gguf` package's own reference, exactly.

Why exact equality is right here: both sides compute in float32 from the same integers with the
same operations in the same order (a float16 scale times a small integer is exact; each later
product or sum is rounded once by IEEE rules, identically on every CPU family), so any difference
is a bug in the bit unpacking, not rounding noise.
"""

from __future__ import annotations

import gguf  # a core dependency: the format's own library is the reference
import numpy as np
import pytest
import torch

from anima.model import ggml

QTYPES = [q for q in ggml.BLOCKS]


def _random_blocks(qtype: str, n_blocks: int, seed: int) -> np.ndarray:
    """Random bytes for `n_blocks` blocks, with every float16 scale replaced by a finite value
    (random bytes would give inf/nan scales, which compare unequal to themselves)."""
    block, size = ggml.BLOCKS[qtype]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    halves = {
        "Q8_0": [0], "Q4_0": [0], "Q5_0": [0], "Q4_1": [0, 2], "Q5_1": [0, 2],
        "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
        "F16": [0],
    }.get(qtype, [])  # fmt: skip
    for at in halves:
        raw[:, at : at + 2] = rng.uniform(-2, 2, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if qtype == "BF16":
        raw = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32).__rshift__(16)
        raw = raw.astype(np.uint16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == "F32":
        raw = rng.standard_normal(n_blocks).astype(np.float32).view(np.uint8).reshape(n_blocks, 4)
    return raw


def test_block_table_is_ggmls() -> None:
    for name, sizes in ggml.BLOCKS.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]] == sizes, name


@pytest.mark.parametrize("qtype", QTYPES)
def test_dequantize_equals_gguf_reference(qtype: str) -> None:
    block, size = ggml.BLOCKS[qtype]
    rows, blocks_per_row = 3, (512 // block if block > 1 else 64)
    raw = _random_blocks(qtype, rows * blocks_per_row, seed=len(qtype) * 7 + size)
    raw = raw.reshape(rows, blocks_per_row * size)
    ref = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).astype(np.float32)
    got = ggml.dequantize(torch.from_numpy(raw), qtype, tuple(ref.shape), torch.float32)
    assert got.shape == ref.shape == (rows, blocks_per_row * block)
    assert torch.isfinite(got).all()
    assert torch.equal(got, torch.from_numpy(ref)), qtype
    # The cast to a compute dtype is one rounding of the same float32 values.
    assert torch.equal(
        ggml.dequantize(torch.from_numpy(raw), qtype, got.shape, torch.bfloat16), got.bfloat16()
    )


def test_row_bytes_refuses_partial_blocks() -> None:
    assert ggml.row_bytes("Q4_K", 512) == 2 * 144
    with pytest.raises(ValueError, match="whole number"):
        ggml.row_bytes("Q4_K", 128)
