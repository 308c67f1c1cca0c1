"""Putting LoRAs on a loaded model and taking them off again, exactly.

Two ways, both undone by `AppliedLoRAs.remove()` (or leaving its ``with`` block):

- **runtime** (default): each adapted ``nn.Linear`` is replaced in its parent by an `AdaptedLinear`
  that computes ``base(x) + Σ strength_i · ΔW_i x``. The base module object and its weight tensor
  are not modified at all, so removing a LoRA puts the very same objects back and switching LoRAs
  costs no reload. The wrapper registers the base's own ``weight``/``bias`` parameters under the same
  names, so state-dict keys, ``.weight.dtype`` queries and ``.to()`` keep working.
- **merge** (``merge=True``, for speed): the layer's ``weight`` parameter is swapped for a new tensor
  ``W + Σ strength_i · ΔW_i`` (computed in fp32, stored in W's dtype). The original parameter object
  is kept and put back on removal, so unmerging restores the base bit for bit (no subtraction).

Code that reads ``layer.weight`` instead of calling the layer would miss runtime LoRAs: fast paths
(``anima.model.dit._linear`` for the AdaLN/timestep linears, fused q/k/v, quantised linears, cached
cross-attention K/V) treat any module that is not a plain ``nn.Linear`` (see `is_adapted`) as opaque
and call it. Merging swaps weight tensors, which such caches must also notice (fused q/k/v does:
the merged weight is no longer a view of the fused tensor; the K/V cache is built inside the run).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from anima.errors import AnimaError
from anima.lora.block_remap import fit_to_model
from anima.lora.file import SHOW, LoRAFile
from anima.lora.modules import Adapter
from anima.lora.targets import PART_NAMES, Target

log = logging.getLogger(__name__)

Stack = list[tuple[Adapter, float]]


def is_adapted(module: nn.Module) -> bool:
    """True for a layer that carries runtime LoRAs (call it; do not read or fuse its weight)."""
    return isinstance(module, AdaptedLinear)


class AdaptedLinear(nn.Module):
    """A Linear layer plus runtime adapters: ``inner(x) + Σ s · adapter.delta(x)``.

    `inner` is the module this one replaced (an ``nn.Linear`` or another `AdaptedLinear`); it is held
    outside the module tree so the tree's parameter names stay those of the plain model.
    """

    def __init__(self, inner: nn.Module, stack: Stack) -> None:
        super().__init__()
        self._inner = (inner,)
        self.stack = stack
        if isinstance(getattr(inner, "compute_dtype", None), torch.dtype):
            self.compute_dtype = inner.compute_dtype  # a LoRA stacked on top computes the same way
        self.in_features, self.out_features = inner.in_features, inner.out_features
        # Same Parameter objects under the same names: state_dict(), .to() and dtype checks see the base.
        for name in ("weight", "bias"):
            p = inner._parameters.get(name)
            if p is not None:
                self._parameters[name] = p
        if "bias" not in self._parameters:
            self.bias = None

    @property
    def inner(self) -> nn.Module:
        return self._inner[0]

    def base(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.inner
        if type(inner) is nn.Linear:
            w, b = self._parameters["weight"], self._parameters.get("bias")
            return F.linear(x, w.to(x.dtype), None if b is None else b.to(x.dtype))
        return inner(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        for adapter, strength in self.stack:
            out = out + adapter.delta(x) * strength
        return out

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, adapters={[(a.kind, s) for a, s in self.stack]}"


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, attr = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), attr


@dataclass
class _Slot:
    parent: nn.Module
    attr: str
    original: nn.Module
    wrapper: nn.Module | None = None  # runtime
    weight: nn.Parameter | None = None  # merge: the original parameter


@dataclass
class AppliedLoRAs:
    """What `apply_loras` did; `remove()` undoes it exactly. Usable as a context manager."""

    merged: bool
    layers: int = 0
    slots: list[_Slot] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the caller should tell the user

    def remove(self) -> None:
        for slot in reversed(self.slots):
            if slot.wrapper is not None:
                if getattr(slot.parent, slot.attr) is not slot.wrapper:
                    raise RuntimeError(
                        f"LoRA layer {slot.attr} was replaced meanwhile; remove LoRAs in reverse order"
                    )
                # A .to()/.half() while applied moved the wrapper's parameters: hand them back.
                for name, p in slot.wrapper._parameters.items():
                    if p is not None and name in slot.original._parameters:
                        slot.original._parameters[name] = p
                setattr(slot.parent, slot.attr, slot.original)
            else:
                slot.original.weight = slot.weight
        self.slots.clear()

    def __enter__(self) -> AppliedLoRAs:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


def _placement(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and compute dtype of a layer (a plain, wrapped or quantised Linear)."""
    dtype = getattr(module, "compute_dtype", None)
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    if not isinstance(dtype, torch.dtype):
        dtype = next((t.dtype for t in tensors if t.dtype in _FLOATS), torch.float32)
    return device, dtype


def _collect(
    models: Mapping[str, nn.Module], loras: Sequence[tuple[LoRAFile, float]]
) -> tuple[dict[Target, Stack], list[str]]:
    """Per target, the adapters to put there; plus one line per LoRA key that fits no layer."""
    stacks: dict[Target, Stack] = {}
    for lora, strength in loras:
        fitted, misfit, absent = 0, [], []
        for target, adapter in lora.adapters.items():
            root = models.get(target.part)
            try:
                module = root.get_submodule(target.path) if root is not None else None
            except AttributeError:
                module = None
            if module is None or not hasattr(module, "in_features"):
                absent.append(str(target))
                continue
            if (module.out_features, module.in_features) != (adapter.out_features, adapter.in_features):
                misfit.append(
                    f"{target} (LoRA {adapter.out_features}x{adapter.in_features}, "
                    f"model {module.out_features}x{module.in_features})"
                )
                continue
            if not any(p.requires_grad for p in adapter.parameters()):
                # Frozen (loaded) factors run in the layer's dtype; trainable ones stay as the trainer
                # made them (fp32 master weights under bf16 autocast).
                device, dtype = _placement(module)
                adapter.to(device=device, dtype=dtype)
            stacks.setdefault(target, []).append((adapter, strength))
            fitted += 1
        if fitted == 0 and (misfit or absent):
            detail = f"e.g. {misfit[0]}" if misfit else f"e.g. {absent[0]} is not in the loaded model"
            raise AnimaError(f"LoRA {lora.name} fits no layer of this model ({detail}); wrong base model?")
        missing_parts = sorted({t.split(":")[0] for t in absent if models.get(t.split(":")[0]) is None})
        for part in missing_parts:
            log.warning(
                "LoRA %s: has %s layers, but no %s is loaded", lora.name, PART_NAMES[part], PART_NAMES[part]
            )
        bad = misfit + [t for t in absent if t.split(":")[0] not in missing_parts]
        if bad:
            log.warning(
                "LoRA %s: %d layers do not fit this model and are ignored: %s%s",
                lora.name, len(bad), "; ".join(bad[:SHOW]), ", ..." if len(bad) > SHOW else "",
            )  # fmt: skip
    skipped = [f"{lora.name}: {k}" for lora, _ in loras for k in lora.unmatched]
    return stacks, skipped


def apply_loras(
    models: Mapping[str, nn.Module],
    loras: Iterable[tuple[LoRAFile, float]],
    *,
    merge: bool = False,
) -> AppliedLoRAs:
    """Apply LoRAs with strengths to `models` ({"dit": ..., "adapter": ..., "te": ...}; parts may be
    missing). Stacked LoRAs add up. Returns the handle that removes them again.

    A 28-block LoRA on a 40-block DiT (Anima-2.9B) is put on the inherited blocks
    (`anima.lora.block_remap`)."""
    dit = models.get("dit")
    blocks = len(dit.blocks) if dit is not None and hasattr(dit, "blocks") else None
    loras = [(fit_to_model(lora, blocks), strength) for lora, strength in loras]
    stacks, skipped = _collect(models, loras)
    applied = AppliedLoRAs(merged=merge, skipped=skipped)
    try:
        for target in sorted(stacks):
            stack = stacks[target]
            parent, attr = _parent(models[target.part], target.path)
            module = getattr(parent, attr)
            if merge:
                if not isinstance(module, nn.Linear):  # wrapped by runtime LoRAs, or quantised
                    raise AnimaError(
                        f"cannot merge a LoRA into {target} ({type(module).__name__}); use runtime mode"
                    )
                w = module.weight
                with torch.no_grad():
                    total = w.float()
                    for adapter, strength in stack:
                        total = total + adapter.delta_weight() * strength
                    # A layer that casts its weight per call (the text encoder's) keeps the fp32 sum.
                    dtype = total.dtype if getattr(module, "casts_weight", False) else w.dtype
                    new = nn.Parameter(total.to(dtype), requires_grad=w.requires_grad)
                module.weight = new
                applied.slots.append(_Slot(parent, attr, module, weight=w))
            else:
                wrapper = AdaptedLinear(module, stack)
                setattr(parent, attr, wrapper)
                applied.slots.append(_Slot(parent, attr, module, wrapper=wrapper))
            applied.layers += 1
    except BaseException:
        applied.remove()
        raise
    return applied


def pipeline_models(pipe) -> dict[str, nn.Module]:
    """The LoRA-adaptable parts of an `anima.pipeline.Pipeline`."""
    return {"dit": pipe.dit, "adapter": pipe.adapter, "te": pipe.text_encoder}
