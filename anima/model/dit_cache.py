"""Work the DiT can reuse across sampling steps.

- `ContextCache` (exact maths): the cross-attention keys and values depend only on the prompt
  context, not on the latent or the step, so they are computed once per prompt
  (`MiniTrainDIT.prepare_context`) and reused by every step, the zero padding as one shared key
  (`anima.model.dit_attention.ContextKV`). Computed for all 512 rows they were about 12% of a
  step's FLOPs at 256x256 and, in fp32, 0.47 GB for CFG's two contexts.
- `FirstBlockCache` (approximate, opt-in): a first-block / TeaCache-style step cache. Each step runs
  block 0; when its output residual has changed little (relative L1, accumulated over the steps
  skipped so far) since the last fully computed step, blocks 1..N-1 are skipped and their residual
  from that step is reused. It changes the image; never enable it by default.

Both are explicit objects the caller owns and passes to ``forward``: nothing is stashed on the model,
so one model can serve several runs (or threads) at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from anima.model.dit_attention import ContextKV


@dataclass(frozen=True)
class ContextCache:
    """Per-block cross-attention (k, v) of one context, from `MiniTrainDIT.prepare_context`."""

    context: torch.Tensor  # [B, Lc, C] in the compute dtype
    kv: tuple[ContextKV | None, ...]  # None for a block whose cross_attn is wrapped (plain path there)

    def check(self, context: torch.Tensor, num_blocks: int) -> None:
        """Refuse a cache built for another context: a mismatch would condition on the wrong prompt."""
        if len(self.kv) != num_blocks:
            raise ValueError(f"context cache has {len(self.kv)} blocks, the model {num_blocks}")
        if context is self.context:
            return
        if context.shape != self.context.shape or not torch.equal(context, self.context.to(context.device)):
            raise ValueError("context_cache was prepared for a different context")


@dataclass
class _Entry:
    first_residual: torch.Tensor
    rest_residual: torch.Tensor
    accumulated: float = 0.0
    skips: int = 0


@dataclass
class FirstBlockCache:
    """Opt-in step cache. threshold: accumulated relative change of block 0's residual below which
    the other blocks are skipped (0.05-0.15 are typical; 0 never skips). At most `max_skips` steps in
    a row are skipped, and the first `warmup` calls per input always run in full.

    One instance per generation: state is keyed by the batch shape and the context tensor, so the
    cond and uncond passes of CFG keep separate histories. `calls` / `skipped` count what happened.
    """

    threshold: float = 0.1
    max_skips: int = 2
    warmup: int = 1
    calls: int = 0
    skipped: int = 0
    _state: dict = field(default_factory=dict, repr=False)
    _seen: dict = field(default_factory=dict, repr=False)

    def run(
        self,
        stream: torch.Tensor,
        context: torch.Tensor,
        first: Callable[[torch.Tensor], torch.Tensor],
        rest: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        # Content fingerprint, not the pointer: a fresh cast of the same prompt must match, and a new
        # tensor allocated where an old one lived must not.
        key = (tuple(stream.shape), _fingerprint(context))
        self.calls += 1
        n_seen = self._seen.get(key, 0)
        self._seen[key] = n_seen + 1
        h1 = first(stream)
        r1 = h1 - stream
        entry = self._state.get(key)
        if entry is not None and n_seen >= self.warmup:
            prev = entry.first_residual
            change = ((r1 - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12)).item()
            if entry.accumulated + change < self.threshold and entry.skips < self.max_skips:
                entry.accumulated += change
                entry.skips += 1
                self.skipped += 1
                return h1 + entry.rest_residual
        out = rest(h1)
        self._state[key] = _Entry(first_residual=r1, rest_residual=out - h1)
        return out


def _fingerprint(context: torch.Tensor) -> tuple:
    """Cheap content key of a [B, L, C] context: shape, dtype, device and per-row weighted sums."""
    rows = context.float().sum(-1)  # [B, L]
    pos = torch.arange(1, rows.shape[-1] + 1, device=rows.device, dtype=rows.dtype)
    return (
        tuple(context.shape), context.dtype, str(context.device),
        tuple(rows.sum(-1).tolist()), tuple((rows * pos).sum(-1).tolist()),
    )  # fmt: skip


@dataclass
class RunCaches:
    """What one sampling pass reuses across its steps; create one per pass and drop it afterwards.

    `kwargs(context)` gives the DiT forward's cache arguments for a context: its `ContextCache`
    (built on first sight by ``dit.prepare_context``, found again by content, since samplers and CFG
    batching rebuild the context tensor every step) and the optional step cache.
    """

    dit: torch.nn.Module
    step_cache: FirstBlockCache | None = None
    max_contexts: int = 8
    _contexts: dict = field(default_factory=dict, repr=False)
    _by_id: dict = field(default_factory=dict, repr=False)

    def context_cache(self, context: torch.Tensor) -> ContextCache:
        # The same tensor object as before (the denoiser reuses its batched contexts): no content
        # check, which on a GPU would be a device-to-host sync every step.
        known = self._by_id.get(id(context))
        if known is not None and known[0] is context:
            return known[1]
        key = _fingerprint(context)
        hit = self._contexts.get(key)
        if hit is None or not torch.equal(hit.context, context.to(hit.context.dtype)):
            if len(self._contexts) >= self.max_contexts:  # prompt editing: a handful per pass
                self._contexts.pop(next(iter(self._contexts)))
            hit = self._contexts[key] = self.dit.prepare_context(context)
        if len(self._by_id) >= 4 * self.max_contexts:
            self._by_id.clear()
        self._by_id[id(context)] = (context, hit)  # holds the tensor, so its id is not reused meanwhile
        return hit

    def kwargs(self, context: torch.Tensor) -> dict:
        out: dict = {"context_cache": self.context_cache(context)}
        if self.step_cache is not None:
            out["step_cache"] = self.step_cache
        return out
