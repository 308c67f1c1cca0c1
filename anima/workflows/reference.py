"""Reference editing ("Cosmos reference"): a clean reference frame appended to the latent along T.

Anima's DiT is a video model run on one frame. Edit LoRAs (and "edit" fine-tunes) are trained with a
reference image VAE-encoded and concatenated after the noisy frame along the temporal axis; the DiT
then sees T = 2 and its output for the reference frame is thrown away. The conventions, as in
ComfyUI-Cosmos-Reference (Hetaneko, ``cosmos_diffusion_reference_wrapper``) and the Anima reference-
latent support proposed for ComfyUI (levzzz5154, the Flux-2-style ``ReferenceLatent`` for Anima):

- frame order: the frame being generated first (t = 0), the reference after it (t = 1);
- the reference latent is the VAE mean in model space (``process_latent_in``: `normalize_latent`),
  clean (not noised) at every step, with the same sigma as the generated frame (one timestep per
  sample);
- positions: the DiT's own 3D RoPE over the (2, H', W') grid, so the reference has temporal index 1
  and the same spatial positions as the frame; no extra offsets;
- padding mask: the all-zero mask channel on both frames (`MiniTrainDIT.embed` appends it per frame);
- the velocity is sliced back to the first T frames: ``v[:, :, :T]``.

`strength` scales the reference latent (1: as encoded; 0 would be an all-zero reference). The node we
read has no strength input, so 1 reproduces it. The reference is resized (Lanczos, centre-cropped to
the aspect first) to each pass's size, since the frames must share H and W.

Without an Edit LoRA the base model has never seen a second frame used this way: a run with a
reference and no LoRA still works but says so (`needs_edit_lora_note`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anima.errors import AnimaError
from anima.recipe import Reference
from anima.workflows.init_image import file_digest, load_rgb
from anima.workflows.resample import resize_images


@dataclass(frozen=True)
class ReferenceFrame:
    """The model-space reference latent [1, 16, 1, h, w] of one pass, and how it joins the DiT input."""

    latent: torch.Tensor
    strength: float = 1.0

    def extend(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, h, w] -> [B, C, T + 1, h, w]: the reference appended after the frames."""
        ref = (self.latent * self.strength).to(x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1)
        if ref.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"reference latent {tuple(ref.shape[-2:])} does not match {tuple(x.shape[-2:])}")
        return torch.cat([x, ref], dim=2)

    @staticmethod
    def frames(v: torch.Tensor, t: int) -> torch.Tensor:
        """The DiT output of the generated frames only (the reference frame's is dropped)."""
        return v[:, :, :t]


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, H, W, 3] centre-cropped to the aspect of width x height, then resized there (Lanczos)."""
    _, h, w, _ = image.shape
    if w * height > h * width:  # too wide: crop the sides
        cw = max(1, round(h * width / height))
        image = image[:, :, (w - cw) // 2 : (w - cw) // 2 + cw]
    elif w * height < h * width:
        ch = max(1, round(w * height / width))
        image = image[:, (h - ch) // 2 : (h - ch) // 2 + ch]
    if image.shape[1:3] == (height, width):
        return image
    return resize_images(image, width, height, "lanczos")


def load_reference(reference: Reference) -> torch.Tensor:
    """The recorded reference image [1, H, W, 3], refusing a file that changed since it was recorded."""
    if reference.image_hash and file_digest(reference.image) != reference.image_hash:
        raise AnimaError(
            f"the recipe's reference image {reference.image} has changed since; give it again",
            setting="reference_image",
        )
    return load_rgb(reference.image)


def needs_edit_lora_note(loras: tuple) -> str | None:
    """The warning for a reference run without any LoRA (an Edit LoRA is what makes it edit)."""
    if loras:
        return None
    return (
        "reference image given but no LoRA is loaded: reference editing needs an Edit LoRA "
        "(the base model was not trained to use a reference frame)"
    )
