"""The ``denoise(x, sigma) -> x0`` a sampler calls: per-step conditioning and guidance.

The model is hidden behind ``model_x0(x, sigma, context, negative=None) -> x0`` (the pipeline
builds it from the DiT); `negative` is given only to the cond forward of attention-space guidance
(NAG), which the model applies itself. Conditioning can change per step (prompt editing):
`pos[i]` / `neg[i]` are the contexts of step i (0-based), usually a handful of distinct tensors
repeated. The step of a call is found from its sigma: step i covers ``(sigmas[i + 1], sigmas[i]]``,
so a second evaluation inside a step (heun, dpmpp_sde) at the next sigma counts as the next step's,
and a sampler's own tweak of the first sigma (er_sde) stays in step 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from anima.sampling.guidance import Guider

ModelX0 = Callable[..., torch.Tensor]  # (x, sigma, context, negative=None) -> x0
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StepIndex:
    """sigma -> 0-based step index of a schedule ``sigmas`` (n steps, n + 1 values)."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self._inner = [float(s) for s in sigmas[1:-1]]  # boundaries between steps
        self.steps = len(sigmas) - 1

    def __call__(self, sigma: torch.Tensor | float) -> int:
        s = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else float(sigma)
        tol = 1e-6 * max(1.0, abs(s))
        return min(sum(1 for b in self._inner if b >= s - tol), self.steps - 1)


def make_denoiser(
    model_x0: ModelX0,
    *,
    pos: Sequence[torch.Tensor],
    neg: Sequence[torch.Tensor],
    sigmas: torch.Tensor,
    guider: Guider,
    attention_guidance: bool = False,
    zero_init_steps: int = 0,
) -> Denoise:
    """Build the denoiser for one pass. `pos`/`neg` hold one [1, L, C] context per step.

    With `attention_guidance` (NAG) the cond forward gets the step's negative context and runs
    apart from the uncond forward (which is never guided); without it cond and uncond share one
    forward when their contexts have the same length. `zero_init_steps` > 0 makes the first steps predict zero
    velocity (x0 = x), CFG-Zero*'s zero-init.
    """
    step_of = StepIndex(sigmas)
    batched: dict[tuple[int, int, int], torch.Tensor] = {}  # pos/neg hold their tensors: ids stay valid
    if len(pos) != step_of.steps or len(neg) != step_of.steps:
        raise ValueError(f"need one context per step ({step_of.steps}), got {len(pos)} and {len(neg)}")

    def guided_cond(x: torch.Tensor, sigma: torch.Tensor, ctx: torch.Tensor, neg_ctx: torch.Tensor):
        if not attention_guidance:
            return model_x0(x, sigma, ctx)
        return model_x0(x, sigma, ctx, neg_ctx)

    @torch.inference_mode()
    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        sigma = sigma.reshape(-1).expand(b) if sigma.numel() == 1 else sigma
        i = step_of(sigma)
        if i < zero_init_steps:
            return x.clone()
        p, n = pos[i].expand(b, -1, -1), neg[i].expand(b, -1, -1)
        if not guider.needs_uncond:
            return guided_cond(x, sigma, p, neg[i])
        if not attention_guidance and p.shape[1] == n.shape[1]:
            # cond and uncond in one forward: one weight pass over memory instead of two. The batched
            # context is built once per distinct pair, so the model's per-context caches see the same
            # tensor every step.
            key = (id(pos[i]), id(neg[i]), b)
            if key not in batched:
                batched[key] = torch.cat([p, n])
            both = model_x0(torch.cat([x, x]), torch.cat([sigma, sigma]), batched[key])
            c, u = both.chunk(2)
        else:
            c, u = guided_cond(x, sigma, p, neg[i]), model_x0(x, sigma, n)
        return guider(c, u, x, sigma)

    return denoise
