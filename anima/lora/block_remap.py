"""28-block LoRAs on the 40-block Anima-2.9B: put each block's update on the block it became.

Anima-2.9B (Gazingstars123/Anima-2.9B) is a LLaMA-Pro depth expansion of the 28-block Anima: twelve
new blocks were inserted and the 28 original blocks kept, in order, at the other 28 positions. A
LoRA trained on the 28-block model must therefore patch the *inherited* positions and leave the
inserted ones alone. The inserted positions are 2, 5, 8, 11, 14, 17, 21, 24, 27, 30, 33 and 36 (the
expansion manifest as applied by ComfyUI-EasyUseAnima's 2.9B LoRA support, n0va39/ComfyUI-EasyUseAnima
#653 and its 1.1.1 release notes #658, and by the ForgeNeo "Anima LoRA 28->40" converter: old 0 -> 0,
2 -> 3, 14 -> 20, 27 -> 39). Note the step of 4 between 17 and 21: the list is not 2 + 3k throughout.

Which layout a LoRA has is read from the DiT block indices it touches:

- any index >= 28: written for the 40-block model (including files already remapped, which skip the
  inserted indices): applied as is;
- exactly blocks 0..27: a 28-block LoRA: remapped;
- a subset of 0..27 that is not all of them: it could be a partial 28-block LoRA or a partial
  40-block one, and the two put the same update on different blocks. Refused with a message rather
  than guessed.

This is structural compatibility, not retraining: the inserted blocks get no update.
"""

from __future__ import annotations

import dataclasses
import re

from anima.errors import AnimaError
from anima.lora.file import LoRAFile
from anima.lora.targets import Target

BASE_BLOCKS = 28
EXPANDED_BLOCKS = 40
INSERTED = (2, 5, 8, 11, 14, 17, 21, 24, 27, 30, 33, 36)
INHERITED = tuple(i for i in range(EXPANDED_BLOCKS) if i not in INSERTED)  # old block i -> INHERITED[i]
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def dit_blocks(lora: LoRAFile) -> set[int]:
    """The DiT block indices a LoRA has layers for."""
    return {int(m.group(1)) for t in lora.adapters if t.part == "dit" and (m := _BLOCK.match(t.path))}


def fit_to_model(lora: LoRAFile, model_blocks: int | None) -> LoRAFile:
    """`lora` with its block indices remapped when it is a 28-block LoRA on a 40-block DiT (see the
    module docstring); unchanged otherwise. AnimaError when the layout is ambiguous."""
    blocks = dit_blocks(lora)
    if model_blocks != EXPANDED_BLOCKS or not blocks or max(blocks) >= BASE_BLOCKS:
        return lora
    if blocks != set(range(BASE_BLOCKS)):
        shown = f"{min(blocks)}..{max(blocks)}" if len(blocks) > 3 else ", ".join(map(str, sorted(blocks)))
        raise AnimaError(
            f"LoRA {lora.name} has layers for DiT blocks {shown} only: on this 40-block model (Anima-2.9B) "
            "that may be a partial 28-block LoRA (its blocks move to the inherited positions) or a "
            "partial 40-block one (they stay); anima does not guess. Use a LoRA trained for this model"
        )
    adapters = {}
    for target, adapter in lora.adapters.items():
        m = _BLOCK.match(target.path) if target.part == "dit" else None
        if m is not None:
            new = INHERITED[int(m.group(1))]
            target = Target("dit", f"blocks.{new}." + target.path[m.end() :])
        adapters[target] = adapter
    return dataclasses.replace(lora, adapters=adapters)
