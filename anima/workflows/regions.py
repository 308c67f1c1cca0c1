"""Regional prompts in the DiT cross-attention: each region's image tokens read their own prompt.

The DiT conditions on text only in its cross-attention, where every image token (query) reads the
512-token context of the prompt (keys/values). With regions, the tokens of a region read the context
of the region's prompt instead; tokens outside every region read the base prompt (the recipe's
prompt). Each region prompt is encoded once, like any prompt (text encoder + LLM adapter, a 512-row
context), and its keys/values are projected once per block and run.

Per token i, with c_r(i) the share of the token's 16x16 px patch that region r covers and b the base
weight, the cross-attention output is

    out(i) = a_0(i) * A(x_i, base) + sum_r a_r(i) * A(x_i, prompt_r),
    a_r = (1 - b) * c_r,    a_0 = 1 - sum_r a_r,

where A is the block's cross-attention (its output projection is linear, so mixing after it is
mixing the attention outputs). Each context is attended only by the tokens that give it weight (the
queries are gathered per context), so region tokens never read another region's prompt, and with b
= 0 they do not read the base prompt either. Overlapping regions are refused (policy ``error``) or
share the overlap in proportion to coverage (``blend``: c_r / sum c where the sum exceeds 1).

The mechanism is a scoped wrapper owned by the run (the pattern of `anima.workflows.nag`):
`regional_attention(dit, control)` wraps every block's ``cross_attn`` (around NAG's wrapper when NAG
is on, so NAG guides each region's attention against the negative prompt) and restores it on exit. It
acts only while `RegionalControl.guiding` says so: during the cond forward of a step before the end
step. The uncond forward (the negative prompt) is never regional. Compare Forge Couple's and Regional
Prompter's attention couple: the same idea, expressed per token with masks rather than per tile.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anima.errors import AnimaError
from anima.model.dit_attention import Attention, ContextKV
from anima.recipe import Recipe, Region
from anima.workflows.init_image import file_digest

PATCH_PIXELS = 16  # one DiT token covers 2x2 latent pixels = 16x16 image pixels


# --------------------------------------------------------------------- masks
def load_region_mask(region: Region, width: int, height: int, number: int) -> torch.Tensor:
    """A mask region's image as [H, W] in [0, 1] (white = the region), refusing another size."""
    from anima.workflows.inpaint import load_mask

    if region.mask_hash and file_digest(region.mask) != region.mask_hash:
        raise AnimaError(
            f"region {number}'s mask {region.mask} has changed since; give it again", setting="regions"
        )
    mask = load_mask(region.mask)[0]
    if tuple(mask.shape) != (height, width):
        raise AnimaError(
            f"region {number}'s mask is {mask.shape[1]}x{mask.shape[0]}, the image is {width}x{height}; "
            "a region mask has the image's size",
            setting="regions",
        )
    return mask.float()


def rect_mask(rect: Sequence[float], width: int, height: int) -> torch.Tensor:
    """[H, W] with the pixels of fractional rectangle (x0, y0, x1, y1) set to 1 (edges rounded)."""
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(rect, (width, height, width, height), strict=True))
    mask = torch.zeros(height, width)
    mask[y0:y1, x0:x1] = 1.0
    return mask


def region_masks(recipe: Recipe) -> torch.Tensor:
    """[R, H, W] pixel masks of the recipe's regions at its size; overlaps checked by its policy."""
    w, h = recipe.width, recipe.height
    masks = torch.stack([
        rect_mask(r.rect, w, h) if r.rect else load_region_mask(r, w, h, i)
        for i, r in enumerate(recipe.regions, start=1)
    ])  # fmt: skip
    if recipe.regional.overlap == "error" and len(masks) > 1:
        both = (masks > 0.5).sum(0) > 1
        if both.any():
            ids = [i + 1 for i in range(len(masks)) if (both & (masks[i] > 0.5)).any()]
            raise AnimaError(
                f"regions {' and '.join(map(str, ids[:2]))} overlap; set the overlap policy to blend",
                setting="regions_overlap",
            )
    return masks


def token_weights(
    masks: torch.Tensor, grid: tuple[int, int, int], base_weight: float, overlap: str
) -> torch.Tensor:
    """Per-token weights [1 + R, T*H'*W'] (base first) for a token grid, from [R, H, W] masks.

    Coverage is the masks' area average over each token's patch; frames after the first (a reference
    frame, `anima.workflows.reference`) read the base prompt only."""
    t, gh, gw = grid
    cover = F.adaptive_avg_pool2d(masks[:, None].float(), (gh, gw))[:, 0].flatten(1)  # [R, H'*W']
    total = cover.sum(0, keepdim=True)
    if overlap == "blend":
        cover = torch.where(total > 1, cover / total.clamp_min(1e-12), cover)
    regions = (1.0 - base_weight) * cover
    base = 1.0 - regions.sum(0, keepdim=True)
    first = torch.cat([base.clamp_min(0.0), regions])  # [1 + R, H'*W']
    if t == 1:
        return first
    rest = torch.zeros(first.shape[0], (t - 1) * gh * gw)
    rest[0] = 1.0
    return torch.cat([first, rest], dim=1)


# --------------------------------------------------------------------- the run's control
@dataclass(frozen=True)
class _Part:
    """One context of a regional forward: its tokens and their weights (None: all tokens, weight 1)."""

    context: torch.Tensor | None  # None: the base context the block was called with
    index: torch.Tensor | None
    weight: torch.Tensor | None


class RegionalControl:
    """Per-run state of the regional prompts: masks, weights, and the region contexts of each step.

    `contexts[r][i]` is region r's [1, L, C] context at step i (prompt editing may change it per step);
    `active_steps`: the step indices with regions (None: all). Only `guiding` makes forwards regional.
    """

    def __init__(
        self,
        masks: torch.Tensor,
        contexts: Sequence[Sequence[torch.Tensor]],
        *,
        base_weight: float,
        overlap: str,
        active_steps: int | None = None,
    ) -> None:
        self.masks, self.contexts = masks, contexts
        self.base_weight, self.overlap, self.active_steps = base_weight, overlap, active_steps
        self._weights: dict[tuple, torch.Tensor] = {}
        self._parts: list[_Part] | None = None

    @property
    def parts(self) -> list[_Part] | None:
        """The contexts of the forward running now (None: not regional)."""
        return self._parts

    def weights(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        key = (tuple(grid), str(device))
        if key not in self._weights:
            self._weights[key] = token_weights(self.masks, grid, self.base_weight, self.overlap).to(device)
        return self._weights[key]

    @contextmanager
    def guiding(self, step: int, grid: tuple[int, int, int], device: torch.device) -> Iterator[None]:
        """Within the block, forwards are regional at `step` on a token `grid` (a no-op past the end)."""
        if self.active_steps is not None and step >= self.active_steps:
            yield
            return
        w = self.weights(grid, device)
        parts = []
        for k in range(w.shape[0]):
            on = w[k] > 0
            if not bool(on.any()):
                continue  # a context no token reads is not attended at all
            ctx = None if k == 0 else self.contexts[k - 1][step]
            if bool(on.all()) and bool((w[k] == 1).all()):
                parts.append(_Part(ctx, None, None))
            else:
                idx = on.nonzero()[:, 0]
                parts.append(_Part(ctx, idx, w[k, idx][:, None]))
        self._parts = parts
        try:
            yield
        finally:
            self._parts = None


# --------------------------------------------------------------------- the wrapper
class RegionalCrossAttention(nn.Module):
    """Wraps one block's cross-attention (a DiT `Attention`, or NAG's wrapper of one)."""

    def __init__(self, inner: nn.Module, control: RegionalControl) -> None:
        super().__init__()
        self.inner = inner
        self.control = control
        self._kv: dict[tuple, tuple[ContextKV, tuple]] = {}

    def _attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if type(self.inner) is not Attention:
            return self.inner(x, context)
        # Plain layer: keys/values of a context projected once per run (the same numbers as the
        # DiT's own per-context cache, `MiniTrainDIT.prepare_context`, padding shared the same way).
        key = (context.data_ptr(), tuple(context.shape), str(context.dtype))
        hit = self._kv.get(key)
        if hit is None or hit[1] != key:
            hit = (self.inner.context_kv(context), key)
            self._kv[key] = hit
        return self.inner(x, context, kv=hit[0])

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        parts = self.control.parts
        if parts is None or context is None or rope is not None:
            return self.inner(x, context, rope)
        b = x.shape[0]
        out: torch.Tensor | None = None
        for part in parts:
            ctx = context if part.context is None else part.context.to(context.dtype).expand(b, -1, -1)
            if part.index is None:
                y = self._attend(x, ctx)
                if len(parts) == 1:
                    return y  # one context for every token at weight 1: exactly the plain layer
                y = y.float()
            else:
                y = self._attend(x.index_select(1, part.index), ctx).float() * part.weight
            if out is None:
                out = x.new_zeros(*x.shape[:2], y.shape[-1], dtype=torch.float32)
            if part.index is None:
                out += y
            else:
                out.index_add_(1, part.index, y)
        assert out is not None
        return out.to(x.dtype)


@contextmanager
def regional_attention(dit: nn.Module, control: RegionalControl) -> Iterator[RegionalControl]:
    """Within the block, every ``dit.blocks[i].cross_attn`` is wrapped for regions; restored after."""
    blocks = list(dit.blocks)
    originals = [blk.cross_attn for blk in blocks]
    try:
        for blk, inner in zip(blocks, originals, strict=True):
            blk.cross_attn = RegionalCrossAttention(inner, control)
        yield control
    finally:
        for blk, inner in zip(blocks, originals, strict=True):
            blk.cross_attn = inner
