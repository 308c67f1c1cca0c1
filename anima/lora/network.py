"""Trainable LoRA / LoKr adapters over a loaded Anima model (the trainer's side of anima.lora).

    net = LoRANetwork({"dit": dit, "adapter": adapter}, rank=16, alpha=16, kind="lora",
                      targets={"dit": DEFAULT_TARGETS["dit"]}, generator=torch.Generator().manual_seed(0))
    with net.applied():                # runtime wrappers; base weights untouched (freeze them yourself)
        loss = ...; loss.backward()    # gradients reach net.parameters() only
    net.save("style.safetensors", fmt="comfy", metadata={...}, dtype=torch.bfloat16)

Adapters start as a zero update (LoRA up / LoKr w2 zero), so step 0 reproduces the base model. The
network's own ``state_dict()`` (keys ``adapters.<part>:<path with / for .>.<factor>``) is what a
resume checkpoint needs; `save` writes the interchange formats through `anima.lora.file`.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from anima.errors import AnimaError
from anima.lora.apply import AppliedLoRAs, apply_loras
from anima.lora.file import LoRAFile, save_lora, state_dict_for
from anima.lora.modules import Adapter, LoKr, LoRA
from anima.lora.targets import DEFAULT_TARGETS, PARTS, Target, select


def _slot(target: Target) -> str:
    return str(target).replace(".", "/")  # ModuleDict keys may not contain dots


class LoRANetwork(nn.Module):
    """One trainable adapter per selected Linear layer of `models` ({"dit"|"adapter"|"te": module}).

    `targets` maps each part to train to a full-match regex over its module paths (default: the DiT
    only, with `DEFAULT_TARGETS["dit"]`: attention q/k/v/out and MLP of every block). `kind` is "lora"
    or "lokr" (`factor`, `decompose_both`: LyCORIS LoKr options). `alpha` defaults to `rank`.
    """

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        *,
        rank: int = 16,
        alpha: float | None = None,
        kind: str = "lora",
        targets: Mapping[str, str] | None = None,
        factor: int = -1,
        decompose_both: bool = False,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if kind not in ("lora", "lokr"):
            raise AnimaError(f"unknown network kind {kind!r}; use lora or lokr")
        if rank < 1:
            raise AnimaError(f"rank must be >= 1, got {rank}")
        targets = dict(targets) if targets is not None else {"dit": DEFAULT_TARGETS["dit"]}
        unknown = set(targets) - set(PARTS)
        if unknown:
            raise AnimaError(f"unknown model part(s) {sorted(unknown)}; use {', '.join(PARTS)}")
        self.models = dict(models)
        self.kind, self.rank, self.alpha = kind, rank, float(alpha if alpha is not None else rank)
        self.adapters = nn.ModuleDict()
        self.targets: list[Target] = []
        for part, pattern in targets.items():
            root = models.get(part)
            if root is None:
                raise AnimaError(f"cannot train the {part}: it is not among the models given")
            paths = [n for n, m in root.named_modules() if isinstance(m, nn.Linear)]
            chosen = select(part, paths, pattern)  # type: ignore[arg-type]
            if not chosen:
                raise AnimaError(f"target pattern {pattern!r} selects no Linear layer of the {part}")
            for target in chosen:
                layer = root.get_submodule(target.path)
                device = layer.weight.device
                if kind == "lora":
                    adapter: Adapter = LoRA.create(
                        layer.in_features, layer.out_features, rank, self.alpha,
                        generator=generator, dtype=dtype, device=device,
                    )  # fmt: skip
                else:
                    adapter = LoKr.create(
                        layer.in_features, layer.out_features, rank, self.alpha, factor=factor,
                        decompose_both=decompose_both, generator=generator, dtype=dtype, device=device,
                    )  # fmt: skip
                self.adapters[_slot(target)] = adapter
                self.targets.append(target)
        self._applied: AppliedLoRAs | None = None

    def adapter_map(self) -> dict[Target, Adapter]:
        return {t: self.adapters[_slot(t)] for t in self.targets}

    def as_lora_file(self, name: str = "network") -> LoRAFile:
        return LoRAFile(name, "network", self.adapter_map())

    # ---------------------------------------------------------------- wrapping
    def apply(self, strength: float = 1.0) -> AppliedLoRAs:
        """Wrap the target layers (runtime mode); idempotent until `remove`."""
        if self._applied is None:
            self._applied = apply_loras(self.models, [(self.as_lora_file(), strength)])
        return self._applied

    def remove(self) -> None:
        if self._applied is not None:
            self._applied.remove()
            self._applied = None

    @contextmanager
    def applied(self, strength: float = 1.0):
        self.apply(strength)
        try:
            yield self
        finally:
            self.remove()

    # ---------------------------------------------------------------- files
    def state_dict_in(self, fmt: str = "comfy", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Tensors of a LoRA file in `fmt` ("comfy", "sd-scripts", "diffusers", "diffusion-pipe")."""
        return state_dict_for(self.adapter_map(), fmt, dtype)

    def save(
        self,
        path: str | Path,
        fmt: str = "comfy",
        metadata: Mapping[str, str] | None = None,
        dtype: torch.dtype | None = torch.bfloat16,
    ) -> Path:
        meta = {"anima_network": self.kind, "anima_rank": str(self.rank), "anima_alpha": str(self.alpha)}
        return save_lora(self.adapter_map(), path, fmt, {**meta, **(metadata or {})}, dtype)

    @torch.no_grad()
    def load_from(self, lora: LoRAFile) -> None:
        """Copy factors from a saved LoRA of the same layout (e.g. to continue training from a file)."""
        mine = self.adapter_map()
        missing = [str(t) for t in mine if t not in lora.adapters]
        if missing:
            raise AnimaError(f"{lora.name} lacks {len(missing)} layers of this network (e.g. {missing[0]})")
        for target, adapter in mine.items():
            src = lora.adapters[target]
            if src.kind != adapter.kind or src.tensors().keys() != adapter.tensors().keys():
                raise AnimaError(f"{lora.name}: {target} is a different kind or shape of adapter")
            for name, p in adapter.tensors().items():
                p.copy_(src.tensors()[name])
            # Keep this network's alpha; rescale the up/w2 factor when the file's scale differs.
            if src.scale != adapter.scale:
                last = "up" if adapter.kind == "lora" else ("w2" if "w2" in adapter.tensors() else "w2_b")
                adapter.tensors()[last].mul_(src.scale / adapter.scale)
