"""One sampling pass's settings, and progress counted across the passes of a run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from anima.errors import AnimaError

Progress = Callable[[int, int], None]
Preview = Callable[[int, int, torch.Tensor], None]


@dataclass(frozen=True)
class SamplingPass:
    """Steps, strength, sampler and scheduler of one pass (the main pass or a hires pass)."""

    steps: int
    denoise: float
    sampler: str
    scheduler: str

    def sigmas(self, shift: float) -> torch.Tensor:
        from anima.sampling import samplers, schedules

        return schedules.get_sigmas(
            schedules.FlowModelSampling(shift=shift),
            self.scheduler,
            self.steps,
            denoise=self.denoise,
            discard_penultimate=samplers.discards_penultimate(self.sampler),
        )

    def num_steps(self, shift: float) -> int:
        return len(self.sigmas(shift)) - 1


class StepHooks:
    """Per-step callback of a run: NaN check, progress over all passes, live previews."""

    def __init__(self, progress: Progress | None = None, preview: Preview | None = None) -> None:
        self.progress, self.preview = progress, preview
        self.total = 0
        self.done = 0

    def step(self, i: int, x0: torch.Tensor) -> None:
        """Step `i` (0-based, counted over the whole run) produced the prediction `x0`."""
        # Stop at the first non-finite step instead of writing a black image at the end.
        if not torch.isfinite(x0).all():
            raise AnimaError(
                f"the prediction became NaN/inf at step {i + 1}; "
                "use --dtype bf16 or fp32 (fp16 overflow) or a lower CFG"
            )
        if self.progress is not None:
            self.progress(i + 1, self.total)
        if self.preview is not None:
            self.preview(i + 1, self.total, x0.cpu())  # the sampling state may live on a GPU
