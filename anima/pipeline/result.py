"""What a pipeline run returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from PIL import Image

from anima.imageio import to_uint8


@dataclass
class Result:
    """Images of one run: float [B,H,W,3] in [0,1], their latents, the recorded recipes and notes."""

    images: torch.Tensor
    latents: torch.Tensor
    recipes: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the workflows decided (hires plan, crops)

    def uint8(self):
        return to_uint8(self.images)

    def pil(self) -> list:
        return [Image.fromarray(a) for a in self.uint8()]
