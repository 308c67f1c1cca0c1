"""Exponential moving average of the trained weights, and swapping it in for samples and the result.

The decay warms up as ``min(decay, (1 + step) / (10 + step))`` so that early, still-moving weights
do not dominate the average for thousands of steps.
"""

from __future__ import annotations

import torch

from anima.errors import AnimaError


class EMA:
    """EMA of named parameters; empty (and free) when `decay` is 0."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = {n: p.detach().clone() for n, p in params.items()} if decay else {}

    def __bool__(self) -> bool:
        return bool(self.shadow)

    @torch.no_grad()
    def update(self, step: int) -> None:
        if not self.shadow:
            return
        decay = min(self.decay, (1 + step) / (10 + step))
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach(), 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.shadow.keys():
            raise AnimaError("checkpoint EMA does not match this run (was ema_decay changed?)")
        for n, t in state.items():
            self.shadow[n].copy_(t)


class swapped_in:
    """Context manager: temporarily copy `values` (e.g. the EMA) into `params`; no-op when empty."""

    def __init__(self, params: dict[str, torch.nn.Parameter], values: dict[str, torch.Tensor]) -> None:
        self.params, self.values, self.saved = params, values, {}

    def __enter__(self) -> None:
        with torch.no_grad():
            for n, t in self.values.items():
                self.saved[n] = self.params[n].detach().clone()
                self.params[n].copy_(t)

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for n, t in self.saved.items():
                self.params[n].copy_(t)
        self.saved = {}
