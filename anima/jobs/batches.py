"""``--batch-count``: sequential batches, each with its own seed.

Batch k runs with seed + k, which is what ComfyUI's "control after generate: increment" does for
each queued run (A1111 also adds 1 per image). Within a batch (``--batch-size``) one noise tensor is
drawn for the whole batch, as ComfyUI does, so every PNG records the seed of its batch and its
position. With variations on (strength > 0) the *variation* seed goes up instead and the main seed
stays, so the batches are variations of one image; that is the point of asking for variations.
"""

from __future__ import annotations

from anima.errors import AnimaError
from anima.recipe import MAX_SEED, Recipe


def batch_recipes(recipe: Recipe, count: int) -> list[Recipe]:
    """The recipes of `count` sequential batches (the first is `recipe` itself)."""
    if not isinstance(count, int) or count < 1:
        raise AnimaError(f"batch count must be an integer >= 1, got {count!r}", setting="batch_count")
    out = [recipe]
    v = recipe.variation
    for k in range(1, count):
        if v.on:
            out.append(recipe.with_(variation_seed=(v.seed + k) & MAX_SEED))
        else:
            out.append(recipe.with_(seed=(recipe.seed + k) & MAX_SEED))
    return out
