"""The contexts of the last few text-encoder passes, reused while the weights that made them stand.

Why: rerunning a prompt with another seed is the common case (`--batch-count`, a seed sweep, the
server's "generate again", the explorer). A pass over the text encoder reads and casts every one of
its weights (about 0.7 s on 2 CPU cores, see `anima.model.text_encoder`), and on a CPU the memory
plan releases the encoder after each run, so without this every rerun would reload it and encode the
same text again. ComfyUI keeps a node's output while its inputs are unchanged, and A1111/Forge keep
the last prompt's conditioning (`get_conds_with_caching`); so does this, for the last few passes.

Exactness: a pass packs its prompts into one sequence (`Qwen3TextEncoder.encode_packed`), and the
matmul's summation order depends on how many rows it has, so a prompt's states can differ in the
last bit with the prompts it was packed with. A pass is therefore kept whole, by the exact requests
it answered: a rerun asks the same pass and gets the same numbers as a fresh process, bit for bit;
a run that changes one prompt of the pair encodes the pair again.

Validity: an entry is keyed by `state`, which the pipeline builds from `weights_state` of the
adapter and says nothing (None: neither read nor kept) while the text encoder differs from how it
was loaded (a LoRA wrapped or merged into it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch
from torch import nn

RECENT_PASSES = 8  # passes kept: a few prompt pairs (about 2 MB a context in fp32)


def weights_state(module: nn.Module) -> tuple:
    """A cheap fingerprint of `module`'s weights: each parameter's place, owner type, storage and
    version counter. Wrapping a layer (a LoRA) changes the owner type, merging swaps the tensor,
    an in-place update bumps the version; reading the weights changes nothing."""
    return tuple(
        (name, type(owner), attr, p.data_ptr(), p._version)
        for name, owner in module.named_modules()
        for attr, p in owner.named_parameters(recurse=False)
    )


class RecentContexts:
    """`get`/`put` of whole passes: (state, requests) -> their contexts, least recently used dropped."""

    def __init__(self, capacity: int = RECENT_PASSES) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._passes: OrderedDict[tuple, list[torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._passes)

    def get(self, state: Hashable, requests: Sequence[Hashable]) -> list[torch.Tensor] | None:
        """The contexts of a kept pass over exactly `requests` under `state`, or None."""
        key = (state, tuple(requests))
        contexts = self._passes.get(key)
        if contexts is not None:
            self._passes.move_to_end(key)
        return contexts

    def put(self, state: Hashable, requests: Sequence[Hashable], contexts: Sequence[torch.Tensor]) -> None:
        if len(contexts) != len(requests):
            raise ValueError(f"{len(requests)} requests but {len(contexts)} contexts")
        self._passes[(state, tuple(requests))] = list(contexts)
        self._passes.move_to_end((state, tuple(requests)))
        while len(self._passes) > self.capacity:
            self._passes.popitem(last=False)

    def clear(self) -> None:
        self._passes.clear()
