"""Applying ControlNet-LLLite patches to the DiT for one run: which calls, which projections, in order.

Where (the reference's hooks in ``comfy/ldm/cosmos/predict2.py``): in every block, the inputs of
``self_attn.{q,k,v}_proj`` (all three computed from the same, unpatched input), ``cross_attn.q_proj``
(the text side's keys and values are untouched) and ``mlp.layer1``. Nothing else.

When: a patch is active in a model call iff ``sigma_end <= sigma <= sigma_start`` (both ends
inclusive), with sigma the float32 sigma of that call, compared in float64 against the window that
the start/end percents give under the run's shift (`window`). Each call is checked on its own, so
Heun's two evaluations in a step can differ. An inactive patch, or one of strength 0, costs nothing:
no embedding is computed and nothing is added.

Several patches apply in order, as chained ComfyUI nodes do: each patch's term is computed from the
input as the previous patch left it.

The embedding of the control image depends only on the image and the token grid, so it is computed
once per grid size in a run (the reference recomputes the same tensor in every active call) and
shared by the cond and uncond rows of a batched forward, repeated to the batch as the reference does.

Mechanism: `ControlRun.installed(dit)` swaps each targeted projection for a `ControlledProjection`
wrapping it and puts the originals back on exit, errors included; `ControlRun.calling(x, sigma)`
says, for the duration of one model call, which patches are active with which embedding. The DiT
module (`anima.model.dit`) knows nothing of this. Swapping the projection makes the fused q/k/v
fast path (`anima.model.dit_attention`) step aside while a patch is installed: patched q, k and v
have different inputs, so one fused matmul cannot compute them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from anima.model.lllite import TARGETS, LLLite
from anima.sampling.schedules import FlowModelSampling
from anima.workflows.control_inputs import control_input, padded_latent_size


def window(start: float, end: float, shift: float) -> tuple[float, float]:
    """(sigma_start, sigma_end) of start/end percents under `shift` (ComfyUI's ``percent_to_sigma``)."""
    ms = FlowModelSampling(shift=shift)
    return ms.percent_to_sigma(start), ms.percent_to_sigma(end)


@dataclass
class ControlPatch:
    """One control unit of a run: a loaded patch, its image (and mask), strength and sigma window.

    `image`: [1, H, W, 3] floats in [0, 1]; `mask`: [1, H, W] or None (4-channel patches only)."""

    lllite: LLLite
    image: torch.Tensor
    mask: torch.Tensor | None
    strength: float
    sigma_start: float
    sigma_end: float
    _embeddings: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def active(self, sigma: float) -> bool:
        return self.strength != 0.0 and self.sigma_end <= sigma <= self.sigma_start

    def embedding(self, latent_hw: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """The control embedding for a latent of this size (computed once per size)."""
        h, w = padded_latent_size(*latent_hw)
        if (h, w) not in self._embeddings:
            device = next(self.lllite.parameters()).device
            cfg = self.lllite.cfg
            x = control_input(
                self.image, self.mask, width=8 * w, height=8 * h, channels=cfg.cond_in_channels,
                masked_input=cfg.inpaint_masked_input, device=device, dtype=dtype,
            )  # fmt: skip
            with torch.inference_mode():
                self._embeddings[(h, w)] = self.lllite.encode(x.to(self.lllite.dtype))
        return self._embeddings[(h, w)]


class ControlRun:
    """The patches of one run and the embeddings active in the model call running now."""

    def __init__(self, patches: Sequence[ControlPatch]) -> None:
        self.patches = [p for p in patches if p.strength != 0.0]  # strength 0: never active, never installed
        self._current: list[tuple[LLLite, torch.Tensor, float]] = []

    def __bool__(self) -> bool:
        return bool(self.patches)

    def targets(self) -> set[tuple[int, str]]:
        return {t for p in self.patches for t in p.lllite.targets()}

    @contextmanager
    def calling(self, x: torch.Tensor, sigma: torch.Tensor) -> Iterator[None]:
        """For one model call on latent `x` [B, C, T, H, W] at `sigma` (a [B] tensor of one value)."""
        s = float(sigma.max())
        dtype = x.dtype
        self._current = [(p.lllite, p.embedding(tuple(x.shape[-2:]), dtype), p.strength)
                         for p in self.patches if p.active(s)]  # fmt: skip
        try:
            yield
        finally:
            self._current = []

    @contextmanager
    def with_embeddings(self, embeddings: Sequence[torch.Tensor]) -> Iterator[None]:
        """For one training forward: every patch active with the given (batch) embedding."""
        self._current = [(p.lllite, e, p.strength) for p, e in zip(self.patches, embeddings, strict=True)]
        try:
            yield
        finally:
            self._current = []

    def apply(self, x: torch.Tensor, block: int, target: str) -> torch.Tensor:
        """The input of (block, target) with every active patch's term added, in order."""
        for lllite, emb, strength in self._current:
            module = lllite.module(block, target)
            if module is not None:
                x = module(x, emb.to(x.dtype), strength)
        return x

    @contextmanager
    def installed(self, dit: nn.Module) -> Iterator[ControlRun]:
        """Within the block, the targeted projections of `dit` are `ControlledProjection`s."""
        slots: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
        try:
            for block, target in sorted(self.targets()):
                if block >= len(dit.blocks):
                    continue
                parent = getattr(dit.blocks[block], TARGETS[target][0])
                attr = TARGETS[target][1]
                inner = getattr(parent, attr)
                wrapper = ControlledProjection(inner, self, block, target)
                setattr(parent, attr, wrapper)
                slots.append((parent, attr, inner, wrapper))
            yield self
        finally:
            for parent, attr, inner, wrapper in reversed(slots):
                if getattr(parent, attr) is not wrapper:
                    raise RuntimeError(f"{attr} was replaced while a control patch was installed")
                setattr(parent, attr, inner)


class ControlledProjection(nn.Module):
    """A DiT projection whose input gets the active patches' terms first.

    The wrapped layer is held outside the module tree and its tensors are registered under their own
    names, so state dicts, dtype queries and block streaming see the plain layer (as LoRA wrappers do).
    """

    def __init__(self, inner: nn.Module, run: ControlRun, block: int, target: str) -> None:
        super().__init__()
        self._inner = (inner,)
        self._run, self.block, self.target = run, block, target
        for name, p in inner._parameters.items():
            self._parameters[name] = p
        for name, b in inner._buffers.items():
            self._buffers[name] = b
        for name in ("in_features", "out_features", "compute_dtype"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    @property
    def inner(self) -> nn.Module:
        return self._inner[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self._run.apply(x, self.block, self.target))

    def extra_repr(self) -> str:
        return f"block {self.block}, {self.target}"
