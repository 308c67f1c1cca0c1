"""Scaled dot-product attention used by every Anima model, with a choice of kernel.

One plain function, so a different kernel is swapped in at a single place. No masks: neither the DiT
nor the adapter uses one (anima-spec §2.6, §3.3). The one additive bias is the DiT's shared key of a
context's zero padding (`anima.model.dit_attention.ContextKV`): the same maths as the unmasked
attention over every padding row.

Backends (`BACKENDS`):

- ``sdpa`` (default): torch's `scaled_dot_product_attention`. torch itself picks the fastest kernel
  it has for the inputs: flash / memory-efficient / cuDNN on CUDA, the flash CPU kernel on CPUs.
- ``sage``: SageAttention (8-bit QK, CUDA only), when the `sageattention` package is installed.
- ``xformers``: xformers' memory-efficient attention, when installed (CUDA).
- ``math``: the reference math kernel (for debugging numerics).

The choice is a plain string stored on each attention module (`set_backend`), never global state.
Backends that cannot run the inputs at hand (CPU tensors, fp32 for sage) fall back to ``sdpa``, so a
choice made for the GPU never breaks a CPU run.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from anima.errors import AnimaError

BACKENDS = ("auto", "sdpa", "math", "sage", "xformers")


def available_backends() -> list[str]:
    """The backends this environment can actually run (``auto`` and ``sdpa`` always)."""
    out = ["auto", "sdpa", "math"]
    for name, module in (("sage", "sageattention"), ("xformers", "xformers")):
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def resolve_backend(name: str | None) -> str:
    """Validate a user's choice: 'auto' and None mean sdpa (torch picks the kernel); missing packages fail."""
    name = (name or "auto").lower()
    if name not in BACKENDS:
        raise AnimaError(f"unknown attention backend '{name}'; choose from {', '.join(BACKENDS)}")
    if name == "auto":
        return "sdpa"
    if name not in available_backends():
        package = {"sage": "sageattention", "xformers": "xformers"}[name]
        raise AnimaError(f"attention backend '{name}' needs the '{package}' package: pip install {package}")
    return name


def set_backend(modules: Iterable[torch.nn.Module], name: str | None) -> str:
    """Set `backend` on every module that has that attribute (the DiT's attention layers); returns it."""
    backend = resolve_backend(name)
    for m in modules:
        if hasattr(m, "attention_backend"):
            m.attention_backend = backend
    return backend


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa", *,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Softmax attention with scale 1/sqrt(head_dim) and no mask.

    q: [B, heads, Lq, head_dim]; k, v: [B, heads, Lk, head_dim]. Returns [B, heads, Lq, head_dim].
    bias: float32 [.., Lk] added to the scores, the log of how many keys each key stands for
    (`ContextKV`). It runs in float32 whatever q's dtype: log(n) rounded to bf16 would misweigh the
    shared key by up to 1%. With a bias the keys are few (the prompt's tokens), so this costs little.
    """
    if bias is not None:
        with _kernel(backend):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=bias)
        return out.to(q.dtype)
    if backend == "math":
        return _math(q, k, v)
    if q.device.type == "cuda":
        if backend == "sage" and q.dtype in (torch.float16, torch.bfloat16):
            from sageattention import sageattn

            return sageattn(q, k, v, tensor_layout="HND", is_causal=False)
        if backend == "xformers":
            import xformers.ops as xops

            out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def _math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    with _kernel("math"):
        return F.scaled_dot_product_attention(q, k, v)


def _kernel(backend: str) -> contextlib.AbstractContextManager:
    """The reference math kernel when asked for (debugging numerics), else torch's own choice."""
    if backend != "math":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)
