"""The GGML tensor types anima reads: block sizes as in ggml's ``ggml-common.h`` (no torch here, so
file headers can be checked without it; the dequantisation is `anima.model.ggml`)."""

from __future__ import annotations

QK_K = 256  # values per super-block of the K types
# type name -> (values per block, bytes per block), as in ggml-common.h / gguf.GGML_QUANT_SIZES.
BLOCKS: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}  # fmt: skip
# Types torch holds natively (no block structure): these load as ordinary tensors.
PLAIN = ("F32", "F16", "BF16")
