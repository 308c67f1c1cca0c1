"""The part of a schedule that ComfyUI's KSamplerAdvanced runs (start / end step, leftover noise).

Reference: ``comfy.samplers.KSampler.sample`` at the fixtures' commit, as the comfy-workflows
fixture README records it (case ``wf_d``): the schedule is computed for all `steps`; when
``end_at_step`` is below its last step it is cut to ``[:end + 1]`` and, unless the node returns
with leftover noise, its last sigma is set to 0; then it starts at ``start_at_step``. karras(8)
with start 2, end 6 and no leftover noise runs s2..s5 and then 0.
"""

from __future__ import annotations

import torch

from anima.errors import AnimaError


def step_window(sigmas: torch.Tensor, start: int, end: int, leftover_noise: bool) -> torch.Tensor:
    """`sigmas` (steps + 1 values) cut to the window KSamplerAdvanced samples."""
    out = sigmas
    if end < len(out) - 1:
        out = out[: end + 1].clone()
        if not leftover_noise:
            out[-1] = 0.0
    if start >= len(out) - 1:
        # ComfyUI would hand the input latent back unsampled; anima refuses a run with no step.
        raise AnimaError(
            f"start step {start} leaves no step of the {len(sigmas) - 1}-step schedule to run",
            setting="start_step",
        )
    return out[start:]
